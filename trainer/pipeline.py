"""The local runner behind `llmtrain run JOB.yaml`: a whole job on one machine, no cluster.

    run_job(job, job_file, workdir=Path("runs"), workers=1, metrics_port=None)

Each stage runs as a child `llmtrain worker --stage-config F` process, the same code a pod
runs, so a local run proves the cluster run. This process never imports torch: it watches
the stage's `progress.json` for the live display and forwards Ctrl-C/SIGTERM to the worker,
which checkpoints and exits. Re-running resumes: completed stages are skipped, an
interrupted stage continues from its newest checkpoint, and a stage whose spec changed since
it ran is reported instead of silently mixed with the old outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtrain.trainer import checkpoint, ray_setup
from llmtrain.trainer.config import check_gates
from llmtrain.trainer.contract import (
    CHECKPOINTS,
    PROGRESS,
    RESULT,
    StageConfig,
    localise,
    read_json,
    resolve_stages,
)
from llmtrain.trainer.terminal import ProgressView

# What the local runner adds to each stage directory (docs/contracts.md §3 has the rest).
STAGE_CONFIG = "stage.json"  # the config it hands `llmtrain worker`
FINGERPRINT = "fingerprint.json"  # what the outputs depend on, to tell a changed stage
RUN_INFO = "run.json"  # when the stage started and finished (report.py reads it)
WORKER_LOG = "logs/worker.log"
GATE_FAILED = 3  # `llmtrain run`'s exit code when a stage's gate stopped the job


class RunError(Exception):
    """A problem the user can fix; printed without a traceback."""

    def __init__(self, lines: list[str], code: int = 1):
        super().__init__("\n".join(lines))
        self.lines, self.code = lines, code


@dataclass
class StagePlan:
    config: StageConfig
    fingerprint: str
    spec: dict[str, Any]
    skip: bool = False
    conflicts: list[str] = field(default_factory=list)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        items: dict[str, Any] = {}
        for k, v in d.items():
            items.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return items
    return {prefix: d}


def plan(
    job: Any, job_file: Path, workdir: Path, workers: int, metrics_port: int | None
) -> list[StagePlan]:
    """Resolve stage configs and decide, per stage, run / skip / conflict."""
    spec = job.spec
    configs = resolve_stages(
        job=job.metadata.name,
        namespace=job.metadata.namespace or "local",
        model=spec.model,
        stages=list(spec.stages),
        storage_root=str(workdir.resolve()),
        workers=workers,
        distributed=spec.distributed,
        checkpointing=spec.checkpointing,
        metrics_port=metrics_port,
        probes=spec.probes,
        # Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY here (docs/guide.md).
        object_store=spec.storage.object_store,
    )
    # Relative paths in a job file mean the job file's folder, wherever `llmtrain run` runs.
    base = job_file.resolve().parent
    plans, previous = [], ""
    for cfg in (localise(c, base) for c in configs):
        # What a stage's outputs depend on: its own spec, the base model, and everything
        # before it (through the previous fingerprint). No absolute paths of the workdir,
        # so a moved workdir still resumes.
        # Gates judge the outputs without changing them: a loosened gate reuses the stage.
        stage_spec = cfg.stage.model_dump(mode="json", by_alias=True, exclude={"gates"})
        material = {
            "stage": stage_spec,
            "model": cfg.model.model_dump(mode="json", by_alias=True),
            "distributed": cfg.distributed.model_dump(mode="json", by_alias=True),
            "previous": previous,
        }
        fp = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
        plans.append(StagePlan(cfg, fp, material))
        previous = fp
    for p in plans:
        stored = read_json(Path(p.config.output_dir) / FINGERPRINT)
        if not stored:
            continue
        if stored["fingerprint"] == p.fingerprint:
            p.skip = (Path(p.config.output_dir) / RESULT).exists()
            continue
        old, new = _flatten(stored["spec"]), _flatten(p.spec)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        p.conflicts = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed if k != "previous"
        ] or ["an earlier stage changed"]
    return plans


def _worker_command(config_path: Path) -> list[str]:
    script = Path(sys.executable).parent / "llmtrain"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "llmtrain.cli.main"]
    return [*base, "worker", "--stage-config", str(config_path)]


def _run_stage(p: StagePlan, view: ProgressView) -> None:
    out = Path(p.config.output_dir)
    log_file = out / WORKER_LOG
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config_path = out / STAGE_CONFIG
    config_path.write_text(p.config.model_dump_json(by_alias=True, indent=2))
    (out / FINGERPRINT).write_text(
        json.dumps({"fingerprint": p.fingerprint, "spec": p.spec}, indent=2)
    )
    resumed = checkpoint.latest(out / CHECKPOINTS)
    view.stage_started(p.config, resumed_from=resumed.name if resumed else None)
    log = log_file.open("a")
    started = time.time()
    if p.config.stage.type != "eval":  # an eval stage runs in its driver, without Ray
        _LOCAL_RAY.start()  # before the first stage that runs; the later ones join it
    proc = subprocess.Popen(
        _worker_command(config_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # our Ctrl-C reaches the worker only through us, once
    )
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if not received:
            view.note(f"{signal.Signals(signum).name}: saving a checkpoint, then stopping")
            proc.send_signal(signal.SIGTERM)
        received.append(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None:
            view.update(p.config, out / PROGRESS)
            time.sleep(0.5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        log.close()
    view.update(p.config, out / PROGRESS)
    if received:
        step = read_json(out / PROGRESS).get("step", "?")
        raise RunError(
            [
                f"stage {p.config.stage.name} interrupted at step {step}; checkpoint saved. "
                "Run the same command again to resume."
            ],
            code=128 + received[0],
        )
    if proc.returncode != 0 or not (out / RESULT).exists():
        tail = log_file.read_text().splitlines()[-25:]
        raise RunError(
            [f"stage {p.config.stage.name} failed (exit {proc.returncode}); last log lines:"]
            + ["  " + line for line in tail]
            + [f"full log: {log_file}"],
            code=proc.returncode or 1,  # the stage's own exit code (contract.ExitCode)
        )
    (out / RUN_INFO).write_text(json.dumps({"started": started, "finished": time.time()}))
    view.stage_finished(p.config, read_json(out / RESULT))


class _LocalRay:
    """The run's one local Ray head (ray_setup.LocalHead), shared by its stages: each stage
    joins it rather than starting a Ray of its own. Launched before the initializer (Ray
    starts while the data is checked), waited for by the first stage that runs, stopped when
    run_job returns or raises; none when RAY_ADDRESS names a Ray already."""

    def __init__(self) -> None:
        self.head: ray_setup.LocalHead | None = None
        self.log_file = Path("ray.log")

    def launch(self) -> None:
        if self.head is None and not os.environ.get("RAY_ADDRESS"):
            self.head = ray_setup.LocalHead(self.log_file)
            self.head.launch()

    def start(self) -> None:
        self.launch()
        if self.head is not None:
            self.head.wait()

    def stop(self) -> None:
        if self.head is not None:
            self.head.stop()
        self.head = None


_LOCAL_RAY = _LocalRay()


def run_job(
    job: Any,
    job_file: Path,
    workdir: Path,
    workers: int = 1,
    metrics_port: int | None = None,
    view: ProgressView | None = None,
) -> Path:
    """Run every stage in order; returns the directory holding the report."""
    _LOCAL_RAY.log_file = workdir.resolve() / job.metadata.name / "ray.log"
    try:
        return _run_job(job, job_file, workdir, workers, metrics_port, view)
    finally:
        _LOCAL_RAY.stop()


def _run_job(
    job: Any,
    job_file: Path,
    workdir: Path,
    workers: int,
    metrics_port: int | None,
    view: ProgressView | None,
) -> Path:
    view = view or ProgressView()
    plans = plan(job, job_file, workdir, workers, metrics_port)
    conflicts = [
        f"stage {p.config.stage.name} changed since it ran in {p.config.output_dir}: {c}"
        for p in plans
        for c in p.conflicts
    ]
    if conflicts:
        raise RunError(
            conflicts + ["delete those stage folders, or pass a new --workdir, to start over"],
            code=2,
        )
    from llmtrain.trainer.report import write_report

    job_dir: Path = workdir.resolve() / job.metadata.name
    if not all(p.skip for p in plans):  # fetch inputs, preflight: before any stage runs
        if any(not p.skip and p.config.stage.type != "eval" for p in plans):
            _LOCAL_RAY.launch()  # starts while the initializer runs
        _initialize(job, plans, workdir)
    for i, p in enumerate(plans):
        if p.skip:
            view.stage_skipped(p.config)
        else:
            _run_stage(p, view)
        failed = [g for g in stage_gates(p.config) if not g["passed"]]
        if failed:  # no later stage runs, as on a cluster (reason GateFailed)
            write_report(job_dir, [q.config for q in plans[: i + 1]])
            raise RunError(
                [f"stage {p.config.stage.name}: gate failed: {g['message']}" for g in failed]
                + [f"report: {job_dir / 'report.md'}"],
                code=GATE_FAILED,
            )
    write_report(job_dir, [p.config for p in plans])
    view.note(f"report: {job_dir / 'report.md'}")
    return job_dir


def _initialize(job: Any, plans: list[StagePlan], workdir: Path) -> None:
    """The job's initializer (trainer/initializer.py), as a pod runs it on a cluster."""
    from llmtrain.trainer import initializer

    configs = [p.config for p in plans]
    try:
        staged = initializer.local(configs, workdir.resolve(), job.metadata.name, "local")
    except initializer.InitializeFailed as e:
        lines = ["preflight failed:"] + [f"  {p}" for p in e.problems]
        raise RunError(lines, code=e.code) from None
    for p, cfg in zip(plans, staged, strict=True):
        p.config = cfg


def stage_gates(cfg: StageConfig) -> list[dict[str, Any]]:
    """The stage's gates against the metrics in its result.json (config.check_gates)."""
    metrics = read_json(Path(cfg.output_dir) / RESULT).get("metrics") or {}
    return check_gates(list(cfg.stage.gates), metrics)
