"""Supervised fine-tuning: full, LoRA, DoRA or QLoRA, on prompt/completion, chat or text data.

    llmtrain worker --stage-config stage.json     # stage.type: sft

Loss is on the completion only (`prompt-completion`), on assistant tokens only (`messages`,
via the chat template's {% generation %} marks, checked before training), or on everything
(`text`). Over-long samples are truncated, or dropped with `preprocessing.dropOverlong`.

Throughput: without `packing` batches are grouped by length, so a batch pads to similar
lengths; with `packing` samples are packed best-fit-decreasing into `maxSeqLength` rows whose
`position_ids` restart per sample (padding-free: no cross-sample attention, no wasted tokens).
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
load_model = load_causal_lm
save = save_final


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    spec, hp = cfg.stage.dataset, cfg.stage.hyperparameters
    train, evaluation, report = data.load_splits(spec, hp.seed)
    out = []
    for name, ds in (("train", train), ("eval", evaluation)):
        if ds is not None:
            rep = report.splits[name]
            where = f"{spec.source}[{name}]"
            ds = encode.tokenize(ds, spec, tokenizer, hp.max_seq_length, rep, where)
            if hp.packing:
                ds = encode.pack(ds, hp.max_seq_length, rep)
        out.append(ds)
    return out[0], out[1], report


def build(ctx: StageContext) -> Any:
    from transformers import Trainer, TrainingArguments

    kwargs = dict(ctx.training_kwargs)
    if not ctx.cfg.stage.hyperparameters.packing:
        kwargs["train_sampling_strategy"] = "group_by_length"
    return Trainer(
        model=ctx.model,
        args=TrainingArguments(**kwargs),
        train_dataset=ctx.train_dataset,
        eval_dataset=ctx.eval_dataset,
        data_collator=encode.Collator(ctx.tokenizer.pad_token_id),
        processing_class=ctx.tokenizer,
    )
