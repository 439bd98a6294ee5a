"""`llmtrain run` stops at a failed gate and goes on past a passing one (real runs, tiny model).

Run 1: SFT deliberately under-trained (one step) against `evalLoss <= 1.2`: the run exits
with GATE_FAILED naming the metric, the threshold and the value; the DPO stage never starts;
the report shows the gate and the probes. Run 2, same workdir: the gate loosened (gates do not
change a stage's outputs, so SFT is reused, not retrained) and an eval stage after it: the
pipeline continues and the eval stage's perplexity gate passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtrain.trainer.pipeline import GATE_FAILED
from tests.conftest import run_cli

from ._alignment import PREFERENCE_COLUMNS, write_preferences
from .helpers import Assets

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
PROBES = {
    "maxNewTokens": 6,
    "prompts": [
        {"prompt": "question: what is 2 plus 3?\nanswer: ", "contains": "5"},
        {"prompt": "question: say hello to ann.\nanswer: ", "regex": "^hello"},
    ],
}


def job(assets: Assets, tmp: Path, stages: list[dict[str, Any]]) -> Path:
    doc = {
        "apiVersion": "llmtrain.io/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "gated"},
        "spec": {
            "model": {
                "source": str(assets.model),
                "tokenizer": {"source": str(assets.tokenizer)},
                "dtype": "float32",
            },
            "stages": stages,
            "probes": PROBES,
        },
    }
    path = tmp / f"job-{len(list(tmp.glob('job-*')))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def sft(max_eval_loss: float) -> dict[str, Any]:
    return {
        "name": "sft",
        "type": "sft",
        "dataset": {"source": "instructions.jsonl", "format": "prompt-completion",
                    "evalFraction": 0.1, "maxSamples": 80},
        "hyperparameters": {"maxSteps": 1, "batchSize": 8, "maxSeqLength": 64},
        "gates": [{"metric": "evalLoss", "max": max_eval_loss}],
    }  # fmt: skip


def test_a_failed_gate_stops_the_run_and_a_passing_one_continues(
    assets: Assets, ray_cluster: str, tmp_path: Path
) -> None:
    ray = {"RAY_ADDRESS": ray_cluster}  # the session's Ray: no head of its own to start
    (tmp_path / "instructions.jsonl").write_text(assets.instructions.read_text())
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    data = {"source": str(prefs), "format": "preference", "columns": PREFERENCE_COLUMNS}
    dpo = {"name": "dpo", "type": "dpo", "dataset": data}
    work = tmp_path / "work"
    first = run_cli(
        "run", str(job(assets, tmp_path, [sft(1.2), dpo])), "--workdir", str(work), **ray
    )
    assert first.returncode == GATE_FAILED, first.stdout + first.stderr
    stage = work / "gated" / "sft"
    result = json.loads((stage / "result.json").read_text())
    eval_loss = result["metrics"]["evalLoss"]
    assert eval_loss == result["eval_loss"] and eval_loss > 1.2  # one step: far from trained
    said = first.stdout + first.stderr
    assert f"stage sft: gate failed: evalLoss = {eval_loss:.4g}, outside gate max 1.2" in said
    # The next stage never started (its data, tokenised by the preflight, waits for it).
    assert not (work / "gated" / "dpo" / "stage.json").exists()
    assert (work / "gated" / "dpo" / "prepared" / "report.json").exists()
    report = (work / "gated" / "report.md").read_text()
    assert "| sft | evalLoss = " in report and "**FAILED**" in report
    assert "| prompt | after sft |" in report
    probes = json.loads((stage / "probes.json").read_text())["probes"]
    assert [p["prompt"] for p in probes] == [p["prompt"] for p in PROBES["prompts"]]
    assert result["metrics"]["probes.passRate"] == sum(p["passed"] for p in probes) / 2

    check = {
        "name": "check",
        "type": "eval",
        "dataset": {"source": str(assets.corpus), "format": "text", "maxSamples": 40},
        "hyperparameters": {"maxSeqLength": 64},
        "gates": [{"metric": "perplexity", "max": 1e6}],
    }
    second = run_cli(
        "run", str(job(assets, tmp_path, [sft(100.0), check])), "--workdir", str(work), **ray
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "stage sft already complete, skipping" in second.stdout
    evaluated = json.loads((work / "gated" / "check" / "eval.json").read_text())
    assert evaluated["model"] == str(stage / "final")
    assert 1 < evaluated["metrics"]["perplexity"] < 1e6
    report = (work / "gated" / "report.md").read_text()
    assert "**FAILED**" not in report and "| check | perplexity = " in report
    assert "| prompt | after sft | after check |" in report
