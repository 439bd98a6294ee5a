"""The local runner behind `llmtrain run JOB.yaml`: a whole job on one machine, no cluster.

    run_job(job_file, job, workdir=Path("runs"), workers=1, metrics_port=None)

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

from llmtrain.trainer.config import ModelRef, ModelSpec, StageConfig, StageSpec, resolve_stages
from llmtrain.trainer.progress_view import ProgressView


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


def _abs_if_local(value: str | None, base: Path) -> str | None:
    """Relative paths in a job file resolve against the file's folder when they exist there."""
    if not value or "://" in value or Path(value).is_absolute():
        return value
    candidate = base / value
    return str(candidate.resolve()) if candidate.exists() else value


def _localise(
    model: ModelSpec, stages: list[StageSpec], base: Path
) -> tuple[ModelSpec, list[StageSpec]]:
    tok = model.tokenizer.model_copy(update={"source": _abs_if_local(model.tokenizer.source, base)})
    model = model.model_copy(update={"source": _abs_if_local(model.source, base), "tokenizer": tok})
    out = []
    for st in stages:
        ds = st.dataset.model_copy(update={"source": _abs_if_local(st.dataset.source, base)})
        upd: dict[str, Any] = {"dataset": ds}
        if st.input_model and st.input_model.path:
            upd["input_model"] = ModelRef(path=_abs_if_local(st.input_model.path, base))
        for algo in ("ppo", "grpo"):
            params = getattr(st, algo)
            if params and params.reward_model and params.reward_model.path:
                ref = ModelRef(path=_abs_if_local(params.reward_model.path, base))
                upd[algo] = params.model_copy(update={"reward_model": ref})
        out.append(st.model_copy(update=upd))
    return model, out


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
    model, stages = _localise(spec.model, spec.stages, job_file.resolve().parent)
    configs = resolve_stages(
        job=job.metadata.name,
        namespace=job.metadata.namespace or "local",
        model=model,
        stages=stages,
        storage_root=str(workdir.resolve()),
        workers=workers,
        distributed=spec.distributed,
        checkpointing=spec.checkpointing,
        metrics_port=metrics_port,
    )
    plans, previous = [], ""
    for cfg in configs:
        # What a stage's outputs depend on: its own spec, the base model, and everything
        # before it (through the previous fingerprint). No absolute paths of the workdir,
        # so a moved workdir still resumes.
        stage_spec = cfg.stage.model_dump(mode="json", by_alias=True)
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
        stored_path = Path(p.config.output_dir) / "fingerprint.json"
        if not stored_path.exists():
            continue
        stored = json.loads(stored_path.read_text())
        if stored["fingerprint"] == p.fingerprint:
            p.skip = (Path(p.config.output_dir) / "result.json").exists()
            continue
        old, new = _flatten(stored["spec"]), _flatten(p.spec)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        p.conflicts = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed if k != "previous"
        ] or ["an earlier stage changed"]
    return plans


def _worker_command(config_path: Path) -> list[str]:
    script = Path(sys.executable).parent / "llmtrain"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "llmtrain.operator.cli"]
    return [*base, "worker", "--stage-config", str(config_path)]


def _run_stage(p: StagePlan, view: ProgressView) -> None:
    out = Path(p.config.output_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    config_path = out / "stage.json"
    config_path.write_text(p.config.model_dump_json(by_alias=True, indent=2))
    (out / "fingerprint.json").write_text(
        json.dumps({"fingerprint": p.fingerprint, "spec": p.spec}, indent=2)
    )
    resumed = sorted(out.glob("checkpoints/checkpoint-*/COMPLETE"))
    view.stage_started(p.config, resumed_from=resumed[-1].parent.name if resumed else None)
    log = (out / "logs" / "worker.log").open("a")
    started = time.time()
    proc = subprocess.Popen(
        _worker_command(config_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # our Ctrl-C reaches the worker only through us, once
        env={**os.environ, "LLMTRAIN_LOCAL_RUN": "1"},
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
            view.update(p.config, out / "progress.json")
            time.sleep(0.5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        log.close()
    view.update(p.config, out / "progress.json")
    if received:
        step = _read_json(out / "progress.json").get("step", "?")
        raise RunError(
            [
                f"stage {p.config.stage.name} interrupted at step {step}; checkpoint saved. "
                "Run the same command again to resume."
            ],
            code=128 + received[0],
        )
    if proc.returncode != 0 or not (out / "result.json").exists():
        tail = (out / "logs" / "worker.log").read_text().splitlines()[-25:]
        raise RunError(
            [f"stage {p.config.stage.name} failed (exit {proc.returncode}); last log lines:"]
            + ["  " + line for line in tail]
            + [f"full log: {out / 'logs' / 'worker.log'}"],
            code=proc.returncode or 1,  # the stage's own exit code (contract.ExitCode)
        )
    (out / "run.json").write_text(json.dumps({"started": started, "finished": time.time()}))
    view.stage_finished(p.config, _read_json(out / "result.json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def run_job(
    job: Any,
    job_file: Path,
    workdir: Path,
    workers: int = 1,
    metrics_port: int | None = None,
    view: ProgressView | None = None,
) -> Path:
    """Run every stage in order; returns the directory holding the report."""
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
    for p in plans:
        if p.skip:
            view.stage_skipped(p.config)
            continue
        _run_stage(p, view)
    from llmtrain.trainer.report import write_report

    job_dir: Path = workdir.resolve() / job.metadata.name
    write_report(job_dir, [p.config for p in plans])
    view.note(f"report: {job_dir / 'report.md'}")
    return job_dir
