"""arguments.py: where each setting of a stage lands in TrainingArguments (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtrain.trainer import arguments

from .helpers import Assets, stage_config

pytestmark = pytest.mark.trainer


def test_hyperparameters_land_in_training_arguments(assets: Assets, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    cfg = stage_config(
        assets, tmp_path / "sft", "sft", {"source": "x.jsonl", "format": "messages"},
        hyperparameters={"learningRate": 1e-4, "maxSteps": 7, "evalSteps": 3, "batchSize": 2,
                         "earlyStoppingPatience": 2, "scheduler": "cosine"},
        checkpointing={"everySteps": 5, "keep": 1},
    )  # fmt: skip
    kw = arguments.training_kwargs(cfg, has_eval=True)
    args = TrainingArguments(**kw)
    assert args.learning_rate == 1e-4 and args.max_steps == 7
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 2
    assert args.lr_scheduler_type == "cosine" and args.save_steps == 5
    assert (args.eval_strategy, args.eval_steps) == ("steps", 3)
    assert args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    assert args.output_dir == str(tmp_path / "sft" / "checkpoints")
    assert kw["deepspeed"] is None  # DDP unless the stage asks for DeepSpeed
    no_eval = arguments.training_kwargs(cfg, has_eval=False)
    assert no_eval["eval_strategy"] == "no" and "metric_for_best_model" not in no_eval


def test_deepspeed_zero_stages_and_offload(assets: Assets, tmp_path: Path) -> None:
    def zero(**distributed: object) -> dict:
        cfg = stage_config(
            assets, tmp_path / "sft", "sft", {"source": "x", "format": "text"},
            distributed={"strategy": "deepspeed", **distributed},
        )  # fmt: skip
        ds = arguments.deepspeed_config(cfg)
        assert ds is not None
        return ds["zero_optimization"]

    assert zero(zeroStage=2) == {"stage": 2}
    assert set(zero(zeroStage=2, offload=True)) == {"stage", "offload_optimizer"}
    z3 = zero(zeroStage=3, offload=True)
    assert {"offload_param", "stage3_gather_16bit_weights_on_model_save"} <= set(z3)
