"""One module per stage type, each with the same shape (`Stage`), run by the engine and the loop.

    stage = stages.load("dpo")                       # the module stages/dpo.py, as a Stage
    train, evaluation, report = stage.prepare_data(cfg, tokenizer)    # the driver, once
    ctx.model = stage.load_model(ctx); trainer = stage.build(ctx)     # every Ray Train worker

`stages/<type>.py` is named after its `StageType`. The other modules here are what only
stages use: `common.py` (alignment data, reference and reward models), `rewards.py` (GRPO's
rule rewards) and `ppo_trainer.py` (PPO on `transformers.Trainer`). What a stage type needs
(data formats, settings blocks, an input model) is config.STAGE_RULES, checked by the driver
before a stage module runs, so the modules do not check it again.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from llmtrain.trainer.config import StageType

if TYPE_CHECKING:
    from llmtrain.trainer.contract import StageConfig
    from llmtrain.trainer.data import Report


@dataclass
class StageContext:
    """What a stage's `load_model`, `build` and `save` get, in each Ray Train worker."""

    cfg: StageConfig
    tokenizer: Any
    model: Any  # None until `load_model` returned; PEFT-wrapped before `build` when APPLY_PEFT
    train_dataset: Any
    eval_dataset: Any | None
    training_kwargs: dict[str, Any]  # arguments.training_kwargs: pass them on whole
    peft_config: Any | None  # the stage's LoraConfig, for stages that wrap the model themselves
    rank: int
    world_size: int
    stage_dir: Path


@runtime_checkable
class Stage(Protocol):
    """The shape of a stage module: documentation, not a base class (modules match it by
    their names; tests/trainer/test_stages.py checks every one). The loop adds atomic
    checkpoints, resume, metrics, early stopping and the stop request around it.
    """

    # peft task type of the adapter: CAUSAL_LM, or SEQ_CLS for a reward model's score head.
    PEFT_TASK_TYPE: str
    # True: the loop wraps `load_model`'s result with the stage's adapter before `build`.
    # False: the stage hands ctx.peft_config to its TRL trainer, which wraps the model itself
    # (so its reference policy can be the base with the adapter disabled).
    APPLY_PEFT: bool

    def prepare_data(self, cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any | None, Report]:
        """Runs once, in the driver, before any Ray worker starts: train and eval
        `datasets.Dataset`s (eval None when nothing is held out) and what was kept and
        dropped. Saved to {stage}/prepared/ and read back by every worker. Raises
        data.DataError for the user's data problems, naming the file and column."""
        ...

    def load_model(self, ctx: StageContext) -> Any:
        """The model the stage trains, before PEFT (quantised to 4 bits for QLoRA)."""
        ...

    def build(self, ctx: StageContext) -> Any:
        """The HF/TRL trainer to run, from ctx.model, ctx.tokenizer, the datasets and
        ctx.training_kwargs (TrainingArguments keywords; TRL config classes take them too)."""
        ...

    def save(self, ctx: StageContext, trainer: Any) -> dict[str, Any]:
        """After training: write final/ (and merged/), atomically; return result.json fields.
        Usually checkpoint.save_final."""
        ...


def load(stage_type: str) -> Stage:
    """The stage module for `stage_type`, or a ValueError naming what is implemented."""
    name = StageType(stage_type).value
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise ValueError(f"stage type {name!r} is not implemented in this trainer") from e
    return cast(Stage, module)
