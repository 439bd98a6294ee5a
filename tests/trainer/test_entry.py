"""`llmtrain worker` (entry.run_stage) ends with the exit code the operator acts on
(contract.ExitCode): PERMANENT (2) for the job's own mistakes, RETRYABLE (75) when
infrastructure failed.

    pytest -m trainer tests/trainer/test_entry.py

Real runs: a missing dataset and a broken config file are found before any Ray worker
starts; a Ray Train worker process SIGKILLed mid-stage (what an OOM kill or a lost node does
to it) fails the stage in the driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llmtrain.trainer.contract import ExitCode

from .helpers import Assets, pretrain_config, stage_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
LLMTRAIN = str(Path(sys.executable).parent / "llmtrain")


def worker(config: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [LLMTRAIN, "worker", "--stage-config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def test_a_missing_dataset_is_permanent(assets: Assets, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    cfg = stage_config(
        assets, tmp_path / "sft", "sft", {"source": str(missing), "format": "prompt-completion"}
    )
    config = tmp_path / "stage.json"
    config.write_text(cfg.model_dump_json(by_alias=True))
    proc = worker(config)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.PERMANENT, out
    assert f"{missing}: no such file or directory" in out
    assert "Traceback" not in out


def test_a_stage_against_the_stage_rules_is_permanent(assets: Assets, tmp_path: Path) -> None:
    # A dpo stage on text data with nothing to start from (config.STAGE_RULES), written by
    # hand: the driver refuses it at start-up, every problem in one line.
    cfg = stage_config(assets, tmp_path / "dpo", "dpo",
                       {"source": str(assets.corpus), "format": "text"})  # fmt: skip
    config = tmp_path / "stage.json"
    config.write_text(cfg.model_dump_json(by_alias=True))
    proc = worker(config)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.PERMANENT, out
    assert (
        "stage dpo: dataset.format: dpo stages need preference data, not text; "
        "dpo stages start from a model"
    ) in out
    assert not (tmp_path / "dpo" / "prepared").exists()


def test_a_broken_config_file_is_permanent(tmp_path: Path) -> None:
    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"job": "x"}))
    proc = worker(config)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.PERMANENT, out
    assert f"{config}: stage: Field required" in out


def test_a_killed_ray_worker_is_retryable(assets: Assets, ray_cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    config = tmp_path / "stage.json"
    config.write_text(pretrain_config(assets, out).model_dump_json(by_alias=True))
    proc = worker(config, RAY_ADDRESS=ray_cluster)
    try:
        deadline = time.time() + 300
        while _step(out) < 3:  # training, not starting up
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "no training step within 300 s"
            time.sleep(0.2)
        victims = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
        ]
        assert victims, "no Ray Train worker process found"
        for p in victims:
            p.send_signal(signal.SIGKILL)
        text, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.RETRYABLE, text[-3000:]
    assert "failed in a worker" in text
    assert not (out / "result.json").exists()


def _step(out: Path) -> int:
    try:
        return int(json.loads((out / "progress.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0
