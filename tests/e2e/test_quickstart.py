"""`llmtrain run` on the quickstart, end to end, as a user runs it (a separate process).

The quickstart's own stages, data, model and step counts (only checkpoints come more
often, so there is one to resume from early in SFT). The run is interrupted with SIGTERM in
the middle of the SFT stage, then re-run: it must skip the finished stage, resume SFT from
its checkpoint, and finish. Then the quickstart's promise is measured on sampled answers:
the SFT model answers in the instruction format, and DPO shifts it to the chosen style.
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
import yaml

from tests.conftest import ROOT, run_cli
from tests.e2e import behaviour

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.trainer]
LLMTRAIN = str(Path(sys.executable).parent / "llmtrain")
QUICKSTART = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
STEPS = {s["name"]: s["hyperparameters"]["maxSteps"] for s in QUICKSTART["spec"]["stages"]}


def quickstart_copy(tmp: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    for stage in doc["spec"]["stages"]:
        stage["dataset"]["source"] = str(ROOT / "examples" / stage["dataset"]["source"])
    doc["spec"]["model"]["tokenizer"]["source"] = str(ROOT / "examples/quickstart/tokenizer")
    doc["spec"]["checkpointing"] = {"everySteps": 10, "keep": 2}
    path = tmp / "quickstart.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "TERM": "dumb"}


def _wait_for_checkpoint(stage_dir: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if list(stage_dir.glob("checkpoints/checkpoint-*/COMPLETE")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no complete checkpoint in {stage_dir} after {timeout}s")


def test_quickstart_interrupted_then_resumed_to_completion(tmp_path) -> None:
    job = quickstart_copy(tmp_path)
    work = tmp_path / "work"
    cmd = [LLMTRAIN, "run", str(job), "--workdir", str(work)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    sft = work / "quickstart" / "sft"
    _wait_for_checkpoint(sft, proc, timeout=900)
    proc.send_signal(signal.SIGTERM)
    first, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, first
    assert "interrupted at step" in first and "Run the same command again to resume" in first
    assert (work / "quickstart" / "pretrain" / "result.json").exists()
    assert not (sft / "result.json").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1200)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "stage pretrain already complete, skipping" in out
    assert "stage sft (sft) resuming from checkpoint-" in out
    assert "stage dpo (dpo) starting" in out

    report = json.loads((work / "quickstart" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["pretrain", "sft", "dpo"]
    for s in report["stages"]:
        assert s["steps"] == STEPS[s["stage"]], s  # resumed SFT ends at the same step count
        assert s["final_loss"] is not None and s["best_loss"] <= s["final_loss"] + 1e-9
        stage_dir = work / "quickstart" / s["stage"]
        assert (stage_dir / "final").is_dir() and (stage_dir / "progress.json").exists()
        assert (stage_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    pretrain_losses = [
        r["loss"]
        for r in map(
            json.loads, (work / "quickstart/pretrain/metrics.jsonl").read_text().splitlines()
        )
        if "loss" in r
    ]
    assert pretrain_losses[-1] < pretrain_losses[0]
    report_md = (work / "quickstart" / "report.md").read_text()
    assert "| sft | sft |" in report_md
    # DPO moved its preference metrics, and the report shows how.
    assert "![dpo alignment metrics](dpo/alignment.png)" in report_md
    assert "Final preference accuracy:" in report_md
    # The probes: the quickstart's questions answered greedily after every stage, one table.
    assert "| prompt | after pretrain | after sft | after dpo |" in report_md, report_md
    probe_runs = {
        n: json.loads((work / "quickstart" / n / "probes.json").read_text())["probes"]
        for n in STEPS
    }
    asked = [p["prompt"] for p in QUICKSTART["spec"]["probes"]["prompts"]]
    assert all([p["prompt"] for p in run] == asked for run in probe_runs.values()), probe_runs
    assert "**pass rate**" in report_md
    # SFT teaches the format: its answers pass more probes than the pretrained model's.
    passed = {n: sum(p["passed"] for p in run) for n, run in probe_runs.items()}
    assert passed["sft"] > passed["pretrain"], probe_runs

    # The result answers a prompt.
    gen = run_cli(
        "generate",
        "--model",
        str(work / "quickstart/dpo/final"),
        "### Question: What color is the sky?\n### Answer:",
    )
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr

    # The promise: SFT teaches the answer format (half its examples hedge, so the SFT model
    # does too); DPO on plain-over-hedge pairs makes plain answers the clear majority.
    prompts = behaviour.questions()
    sft_plain, sft_hedged, sft_answers = behaviour.measure(work / "quickstart/sft/final", prompts)
    dpo_plain, dpo_hedged, dpo_answers = behaviour.measure(work / "quickstart/dpo/final", prompts)
    shown = f"sft {sft_answers[:8]}\ndpo {dpo_answers[:8]}"
    assert sft_plain + sft_hedged >= 0.7, shown  # the instruction format, in either style
    assert sft_hedged >= 0.1, shown  # there is a style for DPO to move away from
    assert dpo_plain >= sft_plain + 0.1 and dpo_plain >= 0.7, shown
    assert dpo_hedged <= sft_hedged / 2, shown


def test_run_rejects_a_bad_job_with_the_validator_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["stages"][1]["peft"]["r"] = 0
    doc["spec"]["stages"][2]["type"] = "dpo2"
    bad.write_text(yaml.safe_dump(doc))
    r = run_cli("run", str(bad), "--workdir", str(tmp_path / "w"))
    assert r.returncode == 1, r.stdout
    assert f"{bad}: spec.stages[1].peft.r: must be greater than 0" in r.stderr
    assert f"{bad}: spec.stages[2].type: must be 'pretrain'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()
