"""engine.run: a run stopped by SIGTERM checkpoints, and resumes to the same step and loss.

The reference is the session's uninterrupted `pretrained` run; this test runs the same config
as `llmtrain worker` in a subprocess that joins the session's Ray, stops it with SIGTERM once
the first checkpoint is complete (the worker saves a checkpoint at the current step and
exits 143), then runs the stage again, which resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtrain.trainer import checkpoint, engine

from .helpers import PRETRAIN_STEPS, Assets, Run, losses, pretrain_config, read_history

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def test_stopped_run_resumes_to_the_same_step_and_loss(
    assets: Assets, pretrained: Run, ray_cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "pretrain"  # same stage name as the reference: same config
    cfg = pretrain_config(assets, out)
    config_file = tmp_path / "stage.json"
    config_file.write_text(cfg.model_dump_json(by_alias=True))
    log = (tmp_path / "worker.log").open("w")
    llmtrain = str(Path(sys.executable).parent / "llmtrain")
    proc = subprocess.Popen(
        [llmtrain, "worker", "--stage-config", str(config_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_ADDRESS": ray_cluster},
    )
    try:
        deadline = time.time() + 300
        while not checkpoint.complete(out / "checkpoints"):
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert "checkpoint saved, run again to resume" in text
    assert not (out / "result.json").exists()
    stopped_at = checkpoint.complete(out / "checkpoints")[-1][0]
    assert 10 <= stopped_at < PRETRAIN_STEPS

    result = engine.run(cfg)  # the retry: resumes from the newest complete checkpoint

    assert result["resumed_from"] == str(out / "checkpoints" / f"checkpoint-{stopped_at}")
    assert result["steps"] == pretrained.result["steps"] == PRETRAIN_STEPS
    assert result["tokens"] == pretrained.result["tokens"]  # the data position was restored
    assert result["final_loss"] == pytest.approx(pretrained.result["final_loss"], abs=0.02)
    # metrics.jsonl holds both attempts: steps up to the stop, then on from the checkpoint
    steps = [h["step"] for h in read_history(out) if "loss" in h]
    assert steps[0] == 1 and steps[-1] == PRETRAIN_STEPS
    reference = {h["step"]: h["loss"] for h in read_history(pretrained.out) if "loss" in h}
    resumed = {h["step"]: h["loss"] for h in read_history(out) if "loss" in h}
    late = [s for s in reference if s > stopped_at + 5]
    assert late and all(resumed[s] == pytest.approx(reference[s], abs=0.02) for s in late)
    assert losses(read_history(out))[-1] == pytest.approx(result["final_loss"])
    assert json.loads((out / "progress.json").read_text())["step"] == PRETRAIN_STEPS
