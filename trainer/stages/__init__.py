"""One module per stage type, each with the same shape, run by `llmtrain.trainer.engine`.

A stage module `stages/<type>.py` (named after `StageType`) provides:

    def prepare_data(cfg: StageConfig, tokenizer) -> tuple[train, eval | None, data.Report]
        # runs once, in the driver, before any Ray worker starts; datasets.Dataset objects,
        # saved to {stage}/prepared/ and read back by every worker. Raise data.DataError for
        # the user's data problems: the message names the file and column.

    def build(ctx: loop.StageContext) -> transformers.Trainer
        # runs in every Ray Train worker: return the HF/TRL trainer to run, built from
        # ctx.model (already wrapped by PEFT unless APPLY_PEFT = False), ctx.tokenizer,
        # ctx.train_dataset / ctx.eval_dataset and ctx.training_kwargs (pass them to
        # TrainingArguments or a TRL config class, which subclass it).

and may override, as module attributes:

    AUTO_CLASS = "AutoModelForCausalLM"   # transformers auto class of the trained model
    PEFT_TASK_TYPE = "CAUSAL_LM"          # peft task type (SEQ_CLS for reward models)
    APPLY_PEFT = True                     # False: the stage uses ctx.peft_config itself
    def load_model(ctx) -> model          # replaces models.load_model
    def save(ctx, trainer) -> dict        # replaces loop.save_final; returns result fields

The engine adds checkpointing, resume, metrics, early stopping and final saving around it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from llmtrain.trainer.config import StageType


def load(stage_type: str) -> ModuleType:
    """The stage module for `stage_type`, or a ValueError naming what is implemented."""
    name = StageType(stage_type).value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise ValueError(f"stage type {name!r} is not implemented in this trainer") from e
