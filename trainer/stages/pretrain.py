"""Pretraining: causal language modelling on text packed into fixed-length blocks.

    llmtrain worker --stage-config stage.json     # stage.type: pretrain, dataset.format: text

Every document gets an EOS, all are concatenated and cut into `maxSeqLength`-token blocks (the
remainder is dropped). With no input model `model.architecture` is built from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtrain.trainer import data, encode
from llmtrain.trainer.checkpoint import save_final
from llmtrain.trainer.contract import StageConfig
from llmtrain.trainer.stages.common import load_causal_lm

if TYPE_CHECKING:  # the driver imports stages for prepare_data; keep it light
    from llmtrain.trainer.stages import StageContext

PEFT_TASK_TYPE = "CAUSAL_LM"
APPLY_PEFT = True
load_model = load_causal_lm  # with no input model: `model.architecture` from scratch
save = save_final


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    spec, hp = cfg.stage.dataset, cfg.stage.hyperparameters
    train, evaluation, report = data.load_splits(spec, hp.seed)
    block = hp.max_seq_length
    rep = report.splits["train"]
    train = encode.blocks(encode.tokenize(train, spec, tokenizer, block, rep), block, rep)
    if evaluation is not None:
        rep = report.splits["eval"]
        evaluation = encode.tokenize(evaluation, spec, tokenizer, block, rep)
        if sum(evaluation["length"]) >= block:
            evaluation = encode.blocks(evaluation, block, rep)
        else:  # too little held-out text for one block: train without evaluation
            evaluation = None
            report.splits.pop("eval")
    return train, evaluation, report


def build(ctx: StageContext) -> Any:
    from transformers import Trainer, TrainingArguments

    return Trainer(
        model=ctx.model,
        args=TrainingArguments(**ctx.training_kwargs),
        train_dataset=ctx.train_dataset,
        eval_dataset=ctx.eval_dataset,
        data_collator=encode.Collator(ctx.tokenizer.pad_token_id),
        processing_class=ctx.tokenizer,
    )
