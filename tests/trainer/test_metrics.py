"""The driver's metrics: overfitting detection and what one record does to gauges and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmtrain.trainer import metrics

from .helpers import Assets, stage_config

pytestmark = pytest.mark.trainer


def test_overfitting_is_eval_rising_while_train_falls() -> None:
    def hist(*rows):
        return [dict(zip(("step", "loss", "eval_loss"), r, strict=False)) for r in rows]

    overfit = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5},
               {"step": 3, "loss": 1.0}, {"step": 4, "eval_loss": 1.8}]  # fmt: skip
    assert metrics.is_overfitting(overfit)
    both_rising = [{"step": 1, "loss": 1.0}, {"step": 2, "eval_loss": 1.5},
                   {"step": 3, "loss": 2.0}, {"step": 4, "eval_loss": 1.8}]  # fmt: skip
    assert not metrics.is_overfitting(both_rising)
    improving = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.8},
                 {"step": 3, "loss": 1.0}, {"step": 4, "eval_loss": 1.5}]  # fmt: skip
    assert not metrics.is_overfitting(improving)
    assert not metrics.is_overfitting(hist((1, 2.0), (2, None, 1.0)))


def test_monitor_turns_records_into_gauges_progress_and_history(
    assets: Assets, tmp_path: Path
) -> None:
    out = tmp_path / "sft"
    out.mkdir()
    cfg = stage_config(assets, out, "sft", {"source": "x.jsonl", "format": "messages"})
    monitor = metrics.Monitor(cfg, out, queue=None)
    registry = monitor.metrics.registry
    labels = {"namespace": "tests", "job": "tiny", "stage": "sft"}

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert math.isnan(value("llmtrain_train_loss"))  # unknown yet, not a perfect 0
    assert value("llmtrain_reward_mean") is None  # alignment metrics appear when logged
    base = {"total_steps": 100, "epoch": 0.1, "samples_seen": 0}
    monitor.apply({"kind": "begin", "time": 1000.0, "step": 0, **base, "num_input_tokens_seen": 0})
    monitor.apply({"kind": "log", "time": 1010.0, "step": 10, **base, "loss": 2.5,
                   "learning_rate": 1e-3, "grad_norm": 0.5, "num_input_tokens_seen": 5000,
                   "samples_seen": 80, "rewards/margins": 0.25})  # fmt: skip
    monitor.apply({"kind": "checkpoint", "step": 10})
    monitor.apply({"kind": "gpu", "rank": 1, "bytes": 1024.0})
    monitor._write_progress()

    assert value("llmtrain_train_step") == 10 and value("llmtrain_train_loss") == 2.5
    assert value("llmtrain_tokens_total") == 5000 and value("llmtrain_samples_total") == 80
    assert value("llmtrain_tokens_per_second") == 500.0
    assert value("llmtrain_eta_seconds") == 90.0  # 1 s per step, 90 steps left
    assert value("llmtrain_checkpoint_step") == 10
    assert value("llmtrain_preference_margin") == 0.25
    gpu = registry.get_sample_value("llmtrain_gpu_memory_allocated_bytes", {**labels, "rank": "1"})
    assert gpu == 1024.0
    progress = json.loads((out / "progress.json").read_text())
    assert progress["step"] == 10 and progress["loss"] == 2.5 and progress["eta_seconds"] == 90
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and logged[0]["loss"] == 2.5 and logged[0]["step"] == 10
