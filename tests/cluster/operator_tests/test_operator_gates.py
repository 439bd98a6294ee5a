"""Quality gates under the real operator: a stage whose result misses its gate fails the job
(GateFailed) and the next stage is never created; one that meets it moves on.

    pytest -m cluster tests/cluster/operator_tests/test_operator_gates.py

kwok runs no containers, so the test plays the SFT driver's last act: the rank-0 container
ends with exit 0 and, in its termination message, the text the trainer's entry point writes
there (`entry.termination_message` of the stage's result metrics). The operator reads it
from the pod status and decides the gate with its own code (state.decide, check_gates).
"""

from __future__ import annotations

from typing import Any

import pytest

from llmtrain.trainer.entry import termination_message
from tests.cluster.operator_tests.harness import Harness, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def gated_job(h: Harness, name: str) -> dict[str, Any]:
    """sft (one step: deliberately under-trained) gated on its eval loss, then dpo."""
    body = h.job_manifest(name, workers=1)
    sft = body["spec"]["stages"][0]
    sft["hyperparameters"] = {"maxSteps": 1}
    sft["gates"] = [{"metric": "evalLoss", "max": 1.2}, {"metric": "loss", "max": 10}]
    return body


def test_a_failed_gate_fails_the_job_and_no_later_stage_starts(
    start_operator: Any, h: Harness
) -> None:
    op = start_operator("--standalone")
    h.apply(gated_job(h, "under"))
    h.wait_pods({"under-sft-a1-0"})
    # One step of SFT leaves the eval loss far above the gate.
    h.end_pod("under-sft-a1-0", "Succeeded", 0, termination_message({"loss": 5.9, "evalLoss": 5.8}))
    st = h.wait_phase("under", "Failed")
    assert st["reason"] == "GateFailed"
    failed = h.condition("under", "Failed")
    assert failed is not None and failed["reason"] == "GateFailed"
    assert failed["message"] == "stage sft: gate failed: evalLoss = 5.8, outside gate max 1.2"
    sft = h.stage("under", "sft")
    assert [(g["metric"], g["value"], g["passed"]) for g in sft["gates"]] == [
        ("evalLoss", 5.8, False),
        ("loss", 5.9, True),
    ]
    assert h.stage("under", "dpo")["attempt"] == 0
    table = h.table("under")
    assert table["PHASE"] == "Failed" and table["GATE"].startswith("sft: evalLoss = 5.8")
    reasons = {e["reason"] for e in h.events("under")}
    assert "GateFailed" in reasons
    key = f'llmtrain_gate_passed{{job="under",metric="evalLoss",namespace="{h.ns}",stage="sft"}}'
    wait_until("the gate metric", lambda: op.metrics().get(key) == 0.0, timeout=15)
    # The dpo stage never gets pods, a ConfigMap or a Service, however long we look.
    objects = h.cluster.kubectl("get", "pods,cm,svc", "-n", h.ns, "-o", "name")
    assert "under-dpo" not in objects, objects


def test_a_passing_gate_lets_the_pipeline_continue(start_operator: Any, h: Harness) -> None:
    op = start_operator("--standalone")
    h.apply(gated_job(h, "good"))
    h.wait_pods({"good-sft-a1-0"})
    h.end_pod("good-sft-a1-0", "Succeeded", 0, termination_message({"loss": 0.9, "evalLoss": 1.1}))
    h.wait_pods({"good-dpo-a1-0"})
    st = h.status("good")
    assert st["currentStage"] == "dpo" and not st.get("failedGate")
    assert all(g["passed"] for g in h.stage("good", "sft")["gates"])
    key = f'llmtrain_gate_passed{{job="good",metric="evalLoss",namespace="{h.ns}",stage="sft"}}'
    wait_until("the gate metric", lambda: op.metrics().get(key) == 1.0, timeout=15)
