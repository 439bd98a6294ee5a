"""Pretraining: causal language modelling on text packed into fixed-length blocks.

    llmtrain worker --stage-config stage.json     # stage.type: pretrain, dataset.format: text

Every document gets an EOS, all are concatenated and cut into `maxSeqLength`-token blocks (the
remainder is dropped). With no input model the engine builds `model.architecture` from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtrain.trainer import data, encode
from llmtrain.trainer.config import DataFormat, StageConfig

if TYPE_CHECKING:  # the driver imports stages for prepare_data; keep it light
    from llmtrain.trainer.loop import StageContext


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    spec, hp = cfg.stage.dataset, cfg.stage.hyperparameters
    if spec.format != DataFormat.text:
        raise data.DataError(
            f"{spec.source}: pretrain stages need format 'text', not {spec.format!r}"
        )
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
