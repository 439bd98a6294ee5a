"""DPO stage: TRL DPOTrainer; reference = input model (adapter disabled with LoRA)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ._alignment import (
    PREFERENCE_COLUMNS,
    config,
    gauge,
    history,
    mean,
    monitor,
    run,
    write_preferences,
)
from .helpers import Assets

pytestmark = pytest.mark.trainer
LN2 = math.log(2)


def dpo_stage(data: Path, max_steps: int, peft: str = "none", **dpo: Any) -> dict[str, Any]:
    return {
        "name": "dpo",
        "type": "dpo",
        "dataset": {
            "source": str(data),
            "format": "preference",
            "columns": PREFERENCE_COLUMNS,
            "evalFraction": 0,
        },
        "peft": {"method": peft, "r": 8, "alpha": 16},
        "hyperparameters": {
            "learningRate": 5e-3 if peft != "none" else 1e-3, "maxSteps": max_steps,
            "batchSize": 8, "loggingSteps": 1, "maxSeqLength": 64, "scheduler": "constant",
        },
        "dpo": {"beta": 0.1, **dpo},
    }  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_preferences(tmp_path_factory.mktemp("dpo") / "prefs.jsonl")


@pytest.fixture(scope="module")
def trained(assets: Assets, data: Path) -> tuple[Any, Path]:
    out = data.parent / "full"
    trainer = run(config(assets, out, dpo_stage(data, 16), checkpointing={"everySteps": 8}))
    return trainer, out


def test_loss_starts_at_ln2_then_falls_and_accuracy_rises(trained: tuple[Any, Path]) -> None:
    trainer, _ = trained
    losses, accuracy = history(trainer, "loss"), history(trainer, "rewards/accuracies")
    margins = history(trainer, "rewards/margins")
    print(f"dpo: loss {losses[0]:.4f} -> {losses[-1]:.4f}, accuracy {accuracy[0]:.2f} -> "
          f"{mean(accuracy[-4:]):.2f}, margin {margins[0]:.3f} -> {margins[-1]:.3f}")  # fmt: skip
    assert losses[0] == pytest.approx(LN2, abs=1e-3)  # policy == reference at step 1
    assert mean(losses[-4:]) < LN2 - 0.1
    assert mean(accuracy[-4:]) >= 0.9 > mean(accuracy[:2])
    assert margins[-1] > 0


def test_dpo_metrics_reach_prometheus_and_progress(
    assets: Assets, trained: tuple[Any, Path], data: Path
) -> None:
    trainer, out = trained
    m = monitor(config(assets, out, dpo_stage(data, 16)), trainer.records)
    for name in ("preference_accuracy", "preference_margin"):
        assert gauge(m, f"llmtrain_{name}") == m.progress[name]
    assert m.progress["preference_margin"] > 0


def test_dpo_resumes_from_checkpoint(assets: Assets, trained: tuple[Any, Path], data: Path) -> None:
    _, out = trained
    trainer = run(config(assets, out, dpo_stage(data, 20), checkpointing={"everySteps": 8}))
    assert str(trainer.resumed_from).endswith("checkpoint-16")
    assert (trainer.first_step, trainer.state.global_step) == (16, 20)


def test_lora_reference_is_the_adapter_disabled_base(assets: Assets, data: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = data.parent / "lora"
    trainer = run(config(assets, out, dpo_stage(data, 4, peft="lora")))
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(model, PeftModel) and trainer.ref_model is None
    assert list(model.peft_config) == ["default"]  # no second "ref" adapter, no model copy
    assert history(trainer, "loss")[0] == pytest.approx(LN2, abs=1e-3)
    assert history(trainer, "loss")[-1] < LN2
    # Adapter disabled, the trained model is exactly the input model: the reference.
    base = AutoModelForCausalLM.from_pretrained(str(assets.model)).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        assert torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)
    assert (out / "final" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("loss_type", "first_loss"),
    [("ipo", (1 / (2 * 0.1)) ** 2), ("hinge", 1.0)],  # at policy == reference
)
def test_loss_types(assets: Assets, data: Path, loss_type: str, first_loss: float) -> None:
    out = data.parent / loss_type
    trainer = run(config(assets, out, dpo_stage(data, 3, lossType=loss_type)))
    losses = history(trainer, "loss")
    assert losses[0] == pytest.approx(first_loss, rel=1e-3)
    assert losses[-1] < losses[0]


def test_precomputed_reference_log_probs(assets: Assets, data: Path) -> None:
    out = data.parent / "precomputed"
    trainer = run(config(assets, out, dpo_stage(data, 3, precomputeRefLogProbs=True)))
    assert trainer.ref_model is None  # full fine-tuning, yet no reference copy in memory
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    assert history(trainer, "loss")[0] == pytest.approx(LN2, abs=1e-3)
