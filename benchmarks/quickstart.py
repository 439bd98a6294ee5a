"""The quickstart's wall time, where it goes, and how far it is from the training alone.

    python -m benchmarks quickstart [--workdir DIR] [--keep]

Two runs of the same work, one after the other, on whatever cores the machine has:

    quickstart   `llmtrain run examples/quickstart.yaml` as a user runs it: a fresh process,
                 the initializer, one local Ray, each stage a driver process and a Ray Train
                 worker, the probes after every stage, the report
    in-process   the baseline: the same three stages (the run's own stage configs: same data,
                 model, steps, batch, seed and probes) in one Python process without Ray,
                 through the same worker loop (loop.train_worker, in_process), each stage's
                 data prepared again; what is left when start-up costs nothing

Printed: the quickstart's phases (initializer; per stage: start-up until its first step,
training, finishing after its last step), then the ratio quickstart / in-process and the
quickstart's wall time against the issue's goal of 120 s, as the last lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "examples" / "quickstart.yaml"
GOAL_S = 120.0


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def phases(job_dir: Path, started: float, ended: float) -> list[tuple[str, float]]:
    """(phase, seconds) from the run's own files: run.json per stage and metrics.jsonl."""
    out: list[tuple[str, float]] = []
    stages = json.loads((job_dir / "report.json").read_text())["stages"]
    first_stage = json.loads((job_dir / stages[0]["stage"] / "run.json").read_text())["started"]
    out.append(("start-up + initializer + Ray head", first_stage - started))
    for s in stages:
        d = job_dir / s["stage"]
        run = json.loads((d / "run.json").read_text())
        steps = [r["time"] for r in _records(d / "metrics.jsonl") if "loss" in r and "time" in r]
        name = s["stage"]
        if not steps:
            out.append((f"{name}: whole stage", run["finished"] - run["started"]))
            continue
        out.append((f"{name}: start-up to first logged step", steps[0] - run["started"]))
        out.append((f"{name}: training", steps[-1] - steps[0]))
        out.append((f"{name}: save, probes, exit", run["finished"] - steps[-1]))
    out.append(("report, Ray stop, exit", ended - run["finished"]))
    return out


def run_quickstart(work: Path) -> tuple[float, list[tuple[str, float]]]:
    llmtrain = Path(sys.executable).parent / "llmtrain"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.time()
    proc = subprocess.run(
        [str(llmtrain), "run", str(JOB), "--workdir", str(work)],
        capture_output=True, text=True, env={**env, "TERM": "dumb"},
    )  # fmt: skip
    ended = time.time()
    if proc.returncode:
        raise SystemExit(f"llmtrain run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return ended - started, phases(work / "quickstart", started, ended)


_IN_PROCESS = """
import json, sys, time
from pathlib import Path
t0 = time.time()
from llmtrain.trainer import loop, prepared, stages
from llmtrain.trainer.contract import StageConfig

class Drop:
    def put_nowait(self, item): pass

for path, out in json.loads(sys.argv[1]):
    cfg = StageConfig.model_validate_json(Path(path).read_text())
    cfg.output_dir = out
    prepared.prepare(cfg, stages.load(cfg.stage.type), Path(out))
    loop.train_worker({"cfg": cfg.model_dump_json(), "queue": Drop(), "in_process": True})
print(json.dumps({"wall": time.time() - t0}))
"""


def run_in_process(job_dir: Path, work: Path) -> float:
    """The run's stage configs (inputs: the quickstart's own outputs), outputs elsewhere."""
    pairs = []
    for d in sorted(job_dir.iterdir(), key=lambda p: (p / "run.json").stat().st_mtime
                    if (p / "run.json").exists() else 0):  # fmt: skip
        if (d / "stage.json").exists():
            pairs.append((str(d / "stage.json"), str(work / d.name)))
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS, json.dumps(pairs)],
        capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"in-process baseline failed:\n{proc.stderr[-4000:]}")
    return time.time() - started


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks quickstart")
    parser.add_argument("--workdir", type=Path, help="where both runs write (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders")
    args = parser.parse_args(argv)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="llmtrain-bench-qs-"))
    try:
        wall, parts = run_quickstart(base / "quickstart")
        floor = run_in_process(base / "quickstart" / "quickstart", base / "in-process")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"quickstart on {os.cpu_count()} cores: {wall:.1f} s wall")
    for name, seconds in parts:
        print(f"  {name:<40} {seconds:6.1f} s")
    overhead = wall - sum(s for n, s in parts if n.endswith(": training"))
    print(f"  {'everything but training':<40} {overhead:6.1f} s")
    print(f"in-process (same stages, no Ray, one process): {floor:.1f} s wall")
    print(f"ratio quickstart / in-process: {wall / floor:.2f}x")
    print(f"ratio quickstart / goal {GOAL_S:.0f} s: {wall / GOAL_S:.2f}x")
    return {"quickstart_s": wall, "in_process_s": floor}


if __name__ == "__main__":
    main()
