"""Object storage against a real S3 server (SeaweedFS, the `s3` fixture in tests/conftest.py).

    pytest tests/trainer/test_objectstore.py -x -q -s     # -s prints the upload/download times

A stage with `object_store` keeps its checkpoints and outputs in the bucket; a stage killed
mid-way resumes, on a fresh disk, from the bucket's newest complete checkpoint and never from
a half-uploaded one; a two-stage `llmtrain run` hands its model over through the bucket;
wrong credentials are a permanent error naming the bucket; and what the operator puts in a
pod (env, stage config) is what the trainer reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from llmtrain.trainer import checkpoint, objectstore
from llmtrain.trainer.contract import COMPLETE, ExitCode, ObjectStoreConfig, StageConfig

from .helpers import Assets, pretrain_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
LLMTRAIN = str(Path(sys.executable).parent / "llmtrain")


@pytest.fixture
def bucket(s3: Any) -> Iterator[ObjectStoreConfig]:
    """A fresh bucket, and the server's credentials in this process's environment (what the
    operator's secretKeyRefs, or a user's shell, provide)."""
    # One bucket, a fresh prefix per test: SeaweedFS gives each bucket its own volumes.
    s3.make_bucket("llmtrain")
    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    yield ObjectStoreConfig(uri=f"s3://llmtrain/{uuid.uuid4().hex[:12]}", endpoint=s3.endpoint)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


STEPS = 30  # checkpoints at 10, 20, 30; keep 2


def short_pretrain(assets: Assets, out: Path, bucket: ObjectStoreConfig) -> StageConfig:
    cfg = pretrain_config(assets, out, object_store=bucket)
    cfg.stage.hyperparameters.max_steps = STEPS
    return cfg


def names(store: objectstore.Store, uri: str) -> list[str]:
    return sorted(store.ls(uri))


def test_checkpoints_and_outputs_go_to_the_bucket(
    assets: Assets, ray_cluster: str, bucket: ObjectStoreConfig, tmp_path: Path
) -> None:
    from llmtrain.trainer import engine

    cfg = short_pretrain(assets, tmp_path / "pretrain", bucket)
    result = engine.run(cfg)
    store = objectstore.connect(bucket)
    uri = f"{bucket.uri}/tiny/pretrain"
    assert {"checkpoints", "final", "result.json", "progress.json", "metrics.jsonl"} <= set(
        names(store, uri)
    )
    # keep: 2 in the bucket too, every one complete
    assert [s for s, _ in store.complete(f"{uri}/checkpoints")] == [20, 30]
    assert names(store, f"{uri}/checkpoints") == ["checkpoint-20", "checkpoint-30"]
    assert store.exists(f"{uri}/final/{COMPLETE}")
    assert store.exists(f"{uri}/final/model.safetensors")
    back = tmp_path / "result.json"
    assert store.download(f"{uri}/result.json", back)
    assert json.loads(back.read_text())["steps"] == result["steps"] == STEPS
    # A retried attempt on a fresh disk finds the stage done in the bucket: no training.
    again = engine.run(cfg.model_copy(update={"output_dir": str(tmp_path / "fresh")}))
    assert again["steps"] == STEPS and not (tmp_path / "fresh" / "checkpoints").exists()


def test_upload_puts_the_marker_last_and_round_trips(
    assets: Assets, bucket: ObjectStoreConfig, tmp_path: Path
) -> None:
    """The timing the report quotes: one checkpoint of the tiny model, up and down."""
    from llmtrain.trainer import tiny

    ckpt = tmp_path / "checkpoint-7"
    tiny.build_model(ckpt, assets.tokenizer)
    (ckpt / COMPLETE).write_text("{}\n")
    store = objectstore.connect(bucket)
    uri = f"{bucket.uri}/ckpts/checkpoint-7"
    t0 = time.monotonic()
    sent = store.upload_dir(ckpt, uri)
    up = time.monotonic() - t0
    assert [s for s, _ in store.complete(f"{bucket.uri}/ckpts")] == [7]
    back = tmp_path / "back" / "checkpoint-7"
    t0 = time.monotonic()
    assert store.download(uri, back)
    down = time.monotonic() - t0
    for p in ckpt.rglob("*"):
        if p.is_file():
            assert (back / p.relative_to(ckpt)).read_bytes() == p.read_bytes(), p
    print(f"\ncheckpoint of the tiny model: {sent / 1e6:.2f} MB, upload {up:.2f}s, "
          f"download {down:.2f}s")  # fmt: skip


def _bucket_steps(store: objectstore.Store, uri: str) -> list[int]:
    try:
        return [s for s, _ in store.complete(uri)]
    except OSError:
        return []


def test_a_killed_stage_resumes_from_the_buckets_newest_complete_checkpoint(
    assets: Assets, ray_cluster: str, bucket: ObjectStoreConfig, tmp_path: Path
) -> None:
    store = objectstore.connect(bucket)
    ckpts = f"{bucket.uri}/tiny/pretrain/checkpoints"
    config = tmp_path / "stage.json"
    cfg = short_pretrain(assets, tmp_path / "pod1" / "pretrain", bucket)
    config.write_text(cfg.model_dump_json(by_alias=True))
    proc = subprocess.Popen(
        [LLMTRAIN, "worker", "--stage-config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RAY_ADDRESS": ray_cluster}, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not _bucket_steps(store, ckpts):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "no checkpoint in the bucket within 300 s"
            time.sleep(0.3)
    finally:  # the pod is gone, and its disk with it
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_for_ray_train_workers_to_end()
    done = _bucket_steps(store, ckpts)
    newest = done[-1]
    assert newest < STEPS
    # A half-uploaded newer checkpoint: its files through the same upload path, stopped before
    # the marker (what a kill mid-upload leaves).
    half = tmp_path / "half" / "checkpoint-25"
    assert store.download(f"{ckpts}/checkpoint-{newest}", half)
    (half / COMPLETE).unlink()
    store.upload_dir(half, f"{ckpts}/checkpoint-25")
    assert store.exists(f"{ckpts}/checkpoint-25/model.safetensors")
    assert _bucket_steps(store, ckpts) == done  # it does not count

    # The retried attempt: a new pod, an empty disk.
    cfg2 = cfg.model_copy(update={"output_dir": str(tmp_path / "pod2" / "pretrain")})
    config.write_text(cfg2.model_dump_json(by_alias=True))
    run = subprocess.run(
        [LLMTRAIN, "worker", "--stage-config", str(config)], capture_output=True, text=True,
        env={**os.environ, "RAY_ADDRESS": ray_cluster}, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    result = json.loads((tmp_path / "pod2" / "pretrain" / "result.json").read_text())
    assert result["resumed_from"].endswith(f"checkpoint-{newest}")
    assert result["steps"] == STEPS
    # The leftover is pruned once a newer checkpoint is complete: only complete ones stay.
    assert names(store, ckpts) == ["checkpoint-20", "checkpoint-30"]
    assert _bucket_steps(store, ckpts) == [20, 30]


def _wait_for_ray_train_workers_to_end(timeout: float = 60) -> None:
    """Ray ends a dead driver's actors by itself; wait for it, so none uploads later."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
        ]
        if not alive:
            return
        time.sleep(0.5)
    raise AssertionError("Ray Train workers outlived their driver")


def test_llmtrain_run_hands_the_model_over_through_the_bucket(
    assets: Assets, ray_cluster: str, bucket: ObjectStoreConfig, tmp_path: Path
) -> None:
    from tests.conftest import run_cli

    hp = {"maxSteps": 5, "batchSize": 4, "maxSeqLength": 64, "loggingSteps": 5}
    pretrain = {
        "name": "pretrain",
        "type": "pretrain",
        "dataset": {"source": str(assets.corpus), "format": "text"},
        "hyperparameters": hp,
    }
    sft = {
        "name": "sft",
        "type": "sft",
        "dataset": {"source": str(assets.instructions), "format": "prompt-completion"},
        "hyperparameters": hp,
    }
    job: dict[str, Any] = {
        "apiVersion": "llmtrain.io/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "handoff"},
        "spec": {
            "model": {"source": str(assets.model), "dtype": "float32"},
            "stages": [pretrain],
            "storage": {"objectStore": bucket.model_dump(by_alias=True, exclude_none=True)},
            "checkpointing": {"everySteps": 5, "keep": 1},
        },
    }
    first, second = tmp_path / "one.yaml", tmp_path / "two.yaml"
    first.write_text(yaml.safe_dump(job))
    job["spec"]["stages"] = [pretrain, sft]
    second.write_text(yaml.safe_dump(job))
    env = {"RAY_ADDRESS": ray_cluster}
    a = run_cli("run", str(first), "--workdir", str(tmp_path / "laptop"), **env)
    assert a.returncode == 0, (a.stdout + a.stderr)[-4000:]
    # Another machine: nothing local. pretrain is done in the bucket; sft starts from its
    # final/ there.
    b = run_cli("run", str(second), "--workdir", str(tmp_path / "other"), **env)
    assert b.returncode == 0, (b.stdout + b.stderr)[-4000:]
    other = tmp_path / "other" / "handoff"
    stage = json.loads((other / "sft" / "stage.json").read_text())
    assert stage["inputModel"] == f"{bucket.uri}/handoff/pretrain/final"
    assert not (other / "pretrain" / "checkpoints").exists()  # not trained again
    assert (other / "pretrain" / "final" / "model.safetensors").is_file()  # downloaded
    store = objectstore.connect(bucket)
    assert store.exists(f"{bucket.uri}/handoff/sft/final/{COMPLETE}")
    assert store.exists(f"{bucket.uri}/handoff/sft/result.json")


def test_wrong_credentials_are_permanent_and_name_the_bucket(
    assets: Assets, bucket: ObjectStoreConfig, tmp_path: Path
) -> None:
    cfg = short_pretrain(assets, tmp_path / "pretrain", bucket)
    config = tmp_path / "stage.json"
    config.write_text(cfg.model_dump_json(by_alias=True))
    run = subprocess.run(
        [LLMTRAIN, "worker", "--stage-config", str(config)], capture_output=True, text=True,
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": "wrong"}, timeout=300,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == ExitCode.PERMANENT, out[-3000:]
    bucket_name = bucket.uri.split("/")[2]
    assert f"object store bucket {bucket_name!r} at {bucket.endpoint}" in out
    assert "Traceback" not in out
    assert not (tmp_path / "pretrain" / "prepared").exists()  # refused before any work


def test_the_pod_env_and_stage_config_the_operator_builds_reach_the_bucket(
    s3: Any, bucket: ObjectStoreConfig
) -> None:
    """The operator's side of the contract, read by the trainer's side: resolve the pod's
    secretKeyRefs as the kubelet would, parse the ConfigMap's stage config, and talk to the
    real server with nothing else."""
    from llmtrain.operator import api, manifests

    doc = {
        "apiVersion": "llmtrain.io/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "j", "namespace": "ml", "uid": "u"},
        "spec": {
            "model": {"source": "org/base"},
            "stages": [
                {
                    "name": "a",
                    "type": "sft",
                    "dataset": {"source": "/d.jsonl", "format": "prompt-completion"},
                },
            ],  # fmt: skip
            "storage": {
                "objectStore": {
                    **bucket.model_dump(by_alias=True, exclude_none=True),
                    "accessKeyId": {"name": "s3", "key": "id"},
                    "secretAccessKey": {"name": "s3", "key": "secret"},
                }
            },
        },
    }
    job = api.parse_job(doc)
    secret = {"id": s3.access_key, "secret": s3.secret_key}
    cm, _svc, pod = manifests.build_stage_objects(job, "a", 1)
    pod_env = {}
    for var in pod["spec"]["containers"][0]["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and ref["name"] == "s3":
            pod_env[var["name"]] = secret[ref["key"]]
    from llmtrain.trainer.contract import StageConfig, stage_uri

    cfg = StageConfig.model_validate_json(next(iter(cm["data"].values())))
    saved = {k: os.environ.pop(k, None) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        os.environ.update(pod_env)
        store = checkpoint.Mirror(cfg).store
        store.upload_file(__file__, f"{stage_uri(cfg)}/probe")
        assert store.exists(f"{bucket.uri}/j/a/probe")
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
