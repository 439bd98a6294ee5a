"""Pretraining from scratch on Ray Train, its stage directory and its /metrics endpoint.

One real run (the session's `pretrained` fixture) backs every test here.
"""

from __future__ import annotations

import json

import pytest

from llmtrain.trainer import checkpoint
from llmtrain.trainer.contract import DRIVER_METRICS, Progress

from .helpers import PRETRAIN_BATCH, PRETRAIN_BLOCK, PRETRAIN_STEPS, Run, losses, read_history

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def test_pretraining_from_scratch_lowers_the_loss(pretrained: Run) -> None:
    history = read_history(pretrained.out)
    train = losses(history)
    assert len(train) >= 5
    assert train[0] > 5.0  # ~ln(400) for a random model
    assert train[-1] < train[0] - 1.5, train
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert evals and evals[-1] < train[0]
    result = pretrained.result
    assert result["steps"] == PRETRAIN_STEPS and not result["stopped_early"]
    assert result["final_loss"] == pytest.approx(train[-1])
    assert result["tokens"] == PRETRAIN_STEPS * PRETRAIN_BATCH * PRETRAIN_BLOCK


def test_stage_directory_follows_the_contract(pretrained: Run) -> None:
    out = pretrained.out
    progress = json.loads((out / "progress.json").read_text())
    assert set(Progress.model_fields) | {"updated_at"} <= progress.keys()
    Progress(**{k: progress[k] for k in Progress.model_fields})  # the operator's shape
    assert progress["step"] == progress["total_steps"] == PRETRAIN_STEPS
    assert progress["tokens_per_second"] > 0 and progress["eta_seconds"] == 0
    saved = json.loads((out / "result.json").read_text())
    assert saved["output"] == str(out / "final") and saved["steps"] == PRETRAIN_STEPS
    assert {"final_loss", "best_loss", "data"} <= saved.keys()
    assert "kept" in saved["data"]["summary"]
    # checkpoints every 10 steps, newest 2 kept, each complete; nothing half-written left
    steps = [s for s, _ in checkpoint.complete(out / "checkpoints")]
    assert steps == [PRETRAIN_STEPS - 10, PRETRAIN_STEPS]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"checkpoint-{s}" for s in steps
    ]
    newest = out / "checkpoints" / f"checkpoint-{PRETRAIN_STEPS}"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        assert (newest / name).is_file(), name
    state = json.loads((newest / "trainer_state.json").read_text())
    assert state["global_step"] == PRETRAIN_STEPS


def test_final_model_loads_and_generates(pretrained: Run) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = pretrained.out / "final"
    tok = AutoTokenizer.from_pretrained(str(final))
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert model.config.hidden_size == 64 and model.config.vocab_size == len(tok)
    inputs = tok("the cat", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8
    text = tok.decode(out[0, inputs["input_ids"].shape[1] :])
    assert text.strip()


def test_metrics_endpoint_serves_the_contract_metrics(pretrained: Run) -> None:
    page = pretrained.metrics_page
    assert page, "no scrape of /metrics with a step > 0 during the run"
    labels = 'job="tiny",namespace="tests",stage="pretrain"'
    # Every metric but the alignment and GPU ones, which appear once a stage logs them.
    alignment = ("llmtrain_reward", "llmtrain_kl", "llmtrain_preference", "llmtrain_generation",
                 "llmtrain_update")  # fmt: skip
    expected = [m.name for m in DRIVER_METRICS if not m.per_rank]
    expected = [n for n in expected if not n.startswith(alignment)]
    assert len(expected) == 14
    for name in expected:
        assert f"{name}{{{labels}}}" in page, name
    # The gpu gauge is declared (per rank) even though there is no CUDA device here.
    assert "# TYPE llmtrain_gpu_memory_allocated_bytes gauge" in page
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("llmtrain_") and "{" in line
    }
    assert values["llmtrain_train_total_steps"] == PRETRAIN_STEPS
    assert values["llmtrain_tokens_total"] > 0
    assert values["llmtrain_stage_start_time_seconds"] > 1.7e9
