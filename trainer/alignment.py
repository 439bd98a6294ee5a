"""Shared pieces of the alignment stages (reward, dpo, ppo, grpo): their data and models.

    train, eval, report = alignment.preference_data(cfg)      # reward, dpo: prompt?/chosen/rejected
    train, _, report = alignment.prompt_data(cfg, tok)        # ppo, grpo: prompt (+ answer)
    rm = alignment.load_reward_model(cfg.reward_model, cfg, tok)   # frozen, num_labels=1
    alignment.check_input_model(cfg)                          # alignment starts from a model

Datasets leave here with the logical column names TRL expects (`prompt`, `chosen`,
`rejected`, `answer`), whatever `dataset.columns` mapped them from; TRL tokenises them in
the workers.
"""

from __future__ import annotations

from typing import Any

from llmtrain.trainer import data, models
from llmtrain.trainer.config import DataFormat, PeftMethod, StageConfig


def check_input_model(cfg: StageConfig) -> None:
    if not cfg.input_model:
        raise ValueError(
            f"stage {cfg.stage.name}: {cfg.stage.type} needs a model to start from "
            "(an earlier stage, inputModel, or model.source)"
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
    if spec.format != DataFormat.preference:
        raise data.DataError(
            f"{spec.source}: {cfg.stage.type} stages need format 'preference' "
            f"(chosen/rejected, optional prompt), not {spec.format!r}"
        )
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
    spec = cfg.stage.dataset
    if spec.format != DataFormat.prompt_only:
        raise data.DataError(
            f"{spec.source}: {cfg.stage.type} stages need format 'prompt-only', not {spec.format!r}"
        )
    # Online RL evaluates by its reward on fresh samples, so nothing is held out.
    spec = spec.model_copy(update={"eval_fraction": 0.0, "eval_split": None})
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


def load_reward_model(source: str | None, cfg: StageConfig, tokenizer: Any) -> Any:
    """A frozen sequence-classification reward model (a reward stage's final/ or a path)."""
    if not source:
        raise ValueError(f"stage {cfg.stage.name}: no reward model (set rewardModel)")
    model = models.load_pretrained(
        source,
        models.resolve_dtype(cfg.model.dtype),
        cfg.stage.peft.method == PeftMethod.qlora,
        None,
        cfg.model.trust_remote_code,
        "AutoModelForSequenceClassification",
        num_labels=1,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval().requires_grad_(False)


def prepare_kbit(model: Any, cfg: StageConfig) -> Any:
    """QLoRA base preparation, for stages that hand `peft_config` to TRL (APPLY_PEFT = False)."""
    if cfg.stage.peft.method != PeftMethod.qlora:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.stage.hyperparameters.gradient_checkpointing
    )
