"""Reward stage: TRL RewardTrainer on toy preferences; final/ is a standalone reward model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ._alignment import PREFERENCE_COLUMNS, config, gauge, history, monitor, run, write_preferences
from .helpers import Assets

pytestmark = pytest.mark.trainer


def reward_stage(data: Path, max_steps: int) -> dict[str, Any]:
    return {
        "name": "rm",
        "type": "reward",
        "dataset": {
            "source": str(data), "format": "preference", "columns": PREFERENCE_COLUMNS,
            "evalFraction": 0.25,
        },
        "hyperparameters": {
            "learningRate": 1e-3, "maxSteps": max_steps, "batchSize": 8, "loggingSteps": 1,
            "maxSeqLength": 64, "evalSteps": 12, "scheduler": "constant",
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def trained(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    root = tmp_path_factory.mktemp("reward")
    data = write_preferences(root / "prefs.jsonl")
    trainer = run(
        config(assets, root / "rm", reward_stage(data, 24), checkpointing={"everySteps": 12})
    )
    return trainer, root / "rm", data


def pairwise_accuracy(model_dir: Path, rows: list[dict[str, str]]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()

    def score(texts: list[str]) -> Any:
        batch = tok([t + tok.eos_token for t in texts], return_tensors="pt", padding=True)
        with torch.no_grad():
            return model(**batch).logits[:, 0]

    chosen = score([r["question"] + r["good"] for r in rows])
    rejected = score([r["question"] + r["bad"] for r in rows])
    return float((chosen > rejected).float().mean())


def test_pairwise_accuracy_rises_above_0_9(trained: tuple[Any, Path, Path]) -> None:
    trainer, out, _ = trained
    accuracy, losses = history(trainer, "accuracy"), history(trainer, "loss")
    evals = history(trainer, "eval_accuracy")
    print(f"reward: loss {losses[0]:.3f} -> {losses[-1]:.3f}, train accuracy {accuracy[0]:.2f} "
          f"-> {accuracy[-1]:.2f}, eval accuracy {evals}")  # fmt: skip
    assert losses[-1] < losses[0]
    assert evals[-1] > 0.9
    # final/ is a standalone sequence classifier that ranks pairs it never saw.
    fresh = write_preferences(out / "fresh.jsonl", 64, seed=7).read_text().splitlines()
    assert pairwise_accuracy(out / "final", [json.loads(line) for line in fresh]) > 0.9
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]
    assert saved["num_labels"] == 1 if "num_labels" in saved else len(saved["id2label"]) == 1
    assert saved["pad_token_id"] is not None


def test_reward_metrics_reach_prometheus_and_progress(
    assets: Assets, trained: tuple[Any, Path, Path]
) -> None:
    trainer, out, data = trained
    m = monitor(config(assets, out, reward_stage(data, 24)), trainer.records)
    for name in ("preference_accuracy", "preference_margin", "reward_mean"):
        assert gauge(m, f"llmtrain_{name}") == m.progress[name]
    assert m.progress["preference_accuracy"] > 0.9


def test_reward_resumes_from_checkpoint(assets: Assets, trained: tuple[Any, Path, Path]) -> None:
    _, out, data = trained
    trainer = run(config(assets, out, reward_stage(data, 30), checkpointing={"everySteps": 12}))
    assert str(trainer.resumed_from).endswith("checkpoint-24")
    assert (trainer.first_step, trainer.state.global_step) == (24, 30)
