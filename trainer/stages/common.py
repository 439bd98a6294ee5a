"""What several stage modules share: models, alignment data, and the generate/update timer.

    model = common.load_causal_lm(ctx)                    # most stages' load_model
    train, eval, report = common.preference_data(cfg)     # reward, dpo: prompt?/chosen/rejected
    train, _, report = common.prompt_data(cfg, tok, True) # ppo, grpo: prompt (+ answer)
    rm = common.load_reward_model(cfg.reward_model, cfg, tok, frozen=True)   # one logit
    class MyTrainer(common.GenerationTimer, Trainer): ... # ppo, grpo: time split in the logs

Datasets leave here with the logical column names TRL expects (`prompt`, `chosen`,
`rejected`, `answer`), whatever `dataset.columns` mapped them from; TRL tokenises them in
the workers. The data formats were checked against config.STAGE_RULES at start-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from llmtrain.trainer import data, models
from llmtrain.trainer.config import PeftMethod
from llmtrain.trainer.contract import StageConfig

if TYPE_CHECKING:
    from llmtrain.trainer.stages import StageContext


def load_causal_lm(ctx: StageContext) -> Any:
    """The stage's input model as a causal LM, or `model.architecture` built from scratch."""
    return models.load_model(ctx.cfg, ctx.tokenizer)


def load_reward_model(
    source: str | None,
    cfg: StageConfig,
    tokenizer: Any,
    *,
    revision: str | None = None,
    frozen: bool = False,
) -> Any:
    """A sequence classifier with one logit: a reward stage's model (from its input model) or,
    `frozen`, the reward model of a ppo/grpo stage (a reward stage's final/ or a path)."""
    if not source:
        raise ValueError(f"stage {cfg.stage.name}: no reward model (set rewardModel)")
    model = models.load_pretrained(
        source,
        models.resolve_dtype(cfg.model.dtype),
        cfg.stage.peft.method == PeftMethod.qlora,
        revision,
        cfg.model.trust_remote_code,
        "AutoModelForSequenceClassification",
        num_labels=1,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # the head pools the last real token
    return model.eval().requires_grad_(False) if frozen else model


def load_reference(cfg: StageConfig) -> Any:
    """A frozen reference policy loaded from the stage's input model (full fine-tuning only;
    with an adapter the reference is the base with the adapter disabled)."""
    assert cfg.input_model is not None
    return models.load_pretrained(
        cfg.input_model,
        models.resolve_dtype(cfg.model.dtype),
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def logical(ds: Any, spec: Any, extra: tuple[str, ...] = ()) -> Any:
    """Keep the format's columns (and `extra` logical fields when present) under logical names."""
    cols = {f: c for f, c in data.columns(spec).items() if c in ds.column_names}
    cols |= {
        f: getattr(spec.columns, f) for f in extra if getattr(spec.columns, f) in ds.column_names
    }
    ds = ds.select_columns(list(cols.values()))
    renames = {c: f for f, c in cols.items() if c != f}
    return ds.rename_columns(renames) if renames else ds


def preference_data(cfg: StageConfig) -> tuple[Any, Any, data.Report]:
    """Preference pairs (format `preference`), train and eval."""
    spec = cfg.stage.dataset
    train, evaluation, report = data.load_splits(spec, cfg.stage.hyperparameters.seed)
    train = logical(train, spec)
    for name, ds in (("train", train), ("eval", evaluation)):
        if ds is not None:
            report.splits[name].sequences = len(ds)
    return train, logical(evaluation, spec) if evaluation is not None else None, report


def prompt_data(
    cfg: StageConfig, tokenizer: Any, render_chat: bool
) -> tuple[Any, Any, data.Report]:
    """Prompts (format `prompt-only`) plus the `answer` column when present; no eval split.

    `render_chat` turns chat prompts (lists of messages) into text with the tokenizer's chat
    template and a generation prompt (PPO works on text; TRL's GRPO renders them itself).
    """
    # Online RL evaluates by its reward on fresh samples, so nothing is held out.
    spec = cfg.stage.dataset.model_copy(update={"eval_fraction": 0.0, "eval_split": None})
    train, _, report = data.load_splits(spec, cfg.stage.hyperparameters.seed)
    train = logical(train, spec, extra=("answer",))
    if render_chat and not isinstance(train[0]["prompt"], str):
        train = train.map(
            lambda row: {
                "prompt": tokenizer.apply_chat_template(
                    row["prompt"], tokenize=False, add_generation_prompt=True
                )
            },
            desc="chat template",
        )
    report.splits["train"].sequences = len(train)
    return train, None, report


class GenerationTimer:
    """Cumulative seconds a Trainer spends generating (sampling and scoring rollouts) and
    updating the policy, for `llmtrain_generation_seconds_total` / `_update_seconds_total`.

    Put it before the Trainer class in the bases, wrap the generation in `generating()`,
    and add `timing()` to the logs. A training step that generates counts its generation
    once, so the update time is the rest of the step.
    """

    generation_seconds = 0.0
    update_seconds = 0.0
    _step_generation = 0.0

    @contextmanager
    def generating(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.generation_seconds += elapsed
            self._step_generation += elapsed

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = super().training_step(*args, **kwargs)  # type: ignore[misc]
        self.update_seconds += time.perf_counter() - started - self._step_generation
        self._step_generation = 0.0
        return out

    def timing(self) -> dict[str, float]:
        """Cumulative values: the driver turns them into counters."""
        return {
            "generation_seconds": self.generation_seconds,
            "update_seconds": self.update_seconds,
        }
