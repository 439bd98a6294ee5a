"""Checkpoints count only when complete; a restart cleans half-written ones and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtrain.trainer import checkpoint
from llmtrain.trainer.contract import COMPLETE, STAGING

from .helpers import Assets, run_in_process, stage_config

pytestmark = pytest.mark.trainer


def make(root: Path, step: int, complete: bool) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("weights")
    if complete:
        (path / COMPLETE).write_text("{}")
    return path


def test_only_marked_checkpoints_count_and_clean_removes_the_rest(tmp_path: Path) -> None:
    for step, done in ((10, True), (20, True), (30, False)):
        make(tmp_path, step, done)
    (tmp_path / STAGING / "checkpoint-40").mkdir(parents=True)
    assert [s for s, _ in checkpoint.complete(tmp_path)] == [10, 20]
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoint-20"
    removed = {p.name for p in checkpoint.clean(tmp_path)}
    assert removed == {"checkpoint-30", STAGING}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20"]
    checkpoint.prune(tmp_path, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-20"]
    assert checkpoint.latest(tmp_path / "missing") is None


def test_commit_marks_then_renames(tmp_path: Path) -> None:
    staged = tmp_path / ".staging" / "checkpoint-5"
    staged.mkdir(parents=True)
    target = checkpoint.commit(staged, tmp_path / "checkpoint-5", {"step": 5})
    assert not staged.exists()
    assert json.loads((target / COMPLETE).read_text())["step"] == 5


def test_trainer_saves_atomically_and_resumes_after_a_crash(assets: Assets, tmp_path: Path) -> None:
    out = tmp_path / "pretrain"

    def config(steps: int):  # same run, a longer schedule on the second start
        return stage_config(
            assets, out, "pretrain", {"source": str(assets.corpus), "format": "text",
                                      "evalFraction": 0},
            hyperparameters={"maxSteps": steps, "loggingSteps": 1},
            checkpointing={"everySteps": 2, "keep": 2},
        )  # fmt: skip

    run_in_process(config(6))
    ckpts = out / "checkpoints"
    assert [s for s, _ in checkpoint.complete(ckpts)] == [4, 6]
    assert not (ckpts / STAGING).exists()
    # A crash mid-save leaves staged files and an unmarked folder behind.
    (ckpts / STAGING / "checkpoint-8").mkdir(parents=True)
    make(ckpts, 8, complete=False)
    checkpoint.clean(ckpts)  # what the driver does first on every start

    trainer, records = run_in_process(config(8))

    end = next(r for r in records if r["kind"] == "end")
    assert end["resumed_from"] == str(ckpts / "checkpoint-6")
    assert trainer.state.global_step == 8
    begin = next(r for r in records if r["kind"] == "begin")
    assert begin["step"] == 6
    logged = [r["step"] for r in records if r["kind"] == "log" and "loss" in r]
    assert logged == [7, 8]
    assert [s for s, _ in checkpoint.complete(ckpts)] == [6, 8]
