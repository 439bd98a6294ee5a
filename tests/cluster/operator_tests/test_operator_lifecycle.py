"""A job's whole life under the real operator: pods, progress, stage hand-off, success.

pytest -m cluster tests/cluster/operator_tests/test_operator_lifecycle.py
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmtrain.operator.reconcile import WORKER_GRACE_SECONDS
from tests.cluster.operator_tests.harness import Harness, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_job_runs_stage_by_stage_to_success(start_operator: Any, h: Harness, drivers: Any) -> None:
    op = start_operator("--standalone")
    port = free_port()
    body = h.job_manifest(
        "chat", monitoring={"metricsPort": port}, runPolicy={"stallTimeoutSeconds": 600}
    )
    body["spec"]["resources"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu"}
    h.apply(body)
    uid = h.job("chat")["metadata"]["uid"]

    # Attempt 1 of the first stage: ConfigMap, Service, two pods, all owned by the job.
    sft = {"chat-sft-a1-0", "chat-sft-a1-1"}
    h.wait_pods(sft)
    pods = h.pods()
    head = pods["chat-sft-a1-0"]
    assert head["metadata"]["labels"]["llmtrain.io/role"] == "head"
    assert head["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert head["metadata"]["ownerReferences"][0]["uid"] == uid
    container = head["spec"]["containers"][0]
    assert container["image"] == "registry.test/llmtrain/trainer:test"  # operator default
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_ADDRESS"] == f"chat-sft-a1-0.chat-sft-a1.{h.ns}.svc:6379"
    cm = h.cluster.get("configmap", "chat-sft-a1", h.ns)
    cfg = json.loads(cm["data"]["stage.json"])
    assert (cfg["inputModel"], cfg["outputDir"], cfg["workers"]) == (
        "org/base",
        "/storage/chat/sft",
        2,
    )
    svc = h.cluster.get("service", "chat-sft-a1", h.ns)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == uid

    st = h.wait_phase("chat", "Running")
    assert st["currentStage"] == "sft"
    running = h.condition("chat", "Running")
    assert running and running["status"] == "True" and running["reason"] == "AllPodsRunning"

    # Progress: the operator reads the driver's /metrics at the rank-0 pod's IP.
    ip = h.pods()["chat-sft-a1-0"]["status"]["podIP"]
    assert ip.startswith("127.")
    driver = drivers(ip, port, "chat", "sft", h.ns)
    driver.set(
        train_step=40,
        train_total_steps=100,
        train_loss=1.25,
        tokens_per_second=900,
        eta_seconds=60,
        checkpoint_step=40,
    )
    st = wait_until(
        "progress in status",
        lambda: (s := h.status("chat")).get("progress") == "40/100" and s,
        timeout=15,
    )
    assert st["loss"] == 1.25
    stage = h.stage("chat", "sft")
    assert stage["progress"]["tokensPerSecond"] == 900 and stage["progress"]["etaSeconds"] == 60
    assert stage["lastCheckpoint"] == "/storage/chat/sft/checkpoints/checkpoint-40"
    table = h.cluster.kubectl("get", "llmtj", "chat", "-n", h.ns)
    assert "40/100" in table and "1.25" in table and "Running" in table
    driver.close()

    # Rank 0 succeeds: the other pod goes, the next stage starts from this stage's output.
    # The worker goes with a short grace, as its head has (Ray's SIGTERM drain would wait
    # 30 s on the gone head before the next gang had its resources).
    with h.watch_pod("chat-sft-a1-1", "{.metadata.deletionGracePeriodSeconds}") as graces:
        h.end_pod("chat-sft-a1-0", "Succeeded")
        h.wait_gone({"chat-sft-a1-1"})
    assert [g for g in graces if g][:1] == [str(WORKER_GRACE_SECONDS)], graces
    dpo = {"chat-dpo-a1-0", "chat-dpo-a1-1"}
    h.wait_pods(dpo)
    assert "chat-sft-a1-0" in h.pods()  # the finished driver stays for its logs
    cfg = json.loads(h.cluster.get("configmap", "chat-dpo-a1", h.ns)["data"]["stage.json"])
    assert cfg["inputModel"] == "/storage/chat/sft/final"
    sft_status = h.stage("chat", "sft")
    assert sft_status["phase"] == "Succeeded" and sft_status["output"] == "/storage/chat/sft/final"
    assert sft_status["progress"]["step"] == 100
    h.wait_phase("chat", "Running")
    assert h.status("chat")["currentStage"] == "dpo"

    h.end_pod("chat-dpo-a1-0", "Succeeded")
    st = h.wait_phase("chat", "Succeeded")
    assert st["completionTime"] and [s["phase"] for s in st["stages"]] == ["Succeeded"] * 2
    done = h.condition("chat", "Succeeded")
    assert done and done["status"] == "True" and done["reason"] == "JobSucceeded"
    h.wait_gone({"chat-dpo-a1-1"})
    assert h.pod_names("chat") == {"chat-sft-a1-0", "chat-dpo-a1-0"}

    reasons = [e["reason"] for e in h.events("chat")]
    for reason in ("AllPodsRunning", "StageSucceeded", "StageStarted", "JobSucceeded"):
        assert reason in reasons, reasons
    # Every condition says how the job ended, not what the sft stage once did.
    for type_ in ("Running", "Created"):
        cond = h.condition("chat", type_)
        assert cond and cond["message"], cond
    assert h.condition("chat", "Running")["reason"] == "JobSucceeded"  # type: ignore[index]
    columns = h.table("chat", "-o", "wide")
    assert (columns["PHASE"], columns["STAGE"], columns["REASON"]) == (
        "Succeeded",
        "dpo (2/2)",
        "JobSucceeded",
    )

    # Finished and without a TTL, the job needs the operator no more: its finalizer goes, so
    # deleting it (or its namespace) never waits for an operator, installed or not.
    wait_until("finalizer removed", lambda: not h.job("chat")["metadata"].get("finalizers"))

    # One INFO line per transition, and no access log of the health probe.
    log = op.log.read_text()
    for line in (
        f"job {h.ns}/chat: created 2 pod(s) of stage sft attempt 1",
        f"job {h.ns}/chat: StageSucceeded: stage sft succeeded",
        f"job {h.ns}/chat: JobSucceeded: all 2 stage(s) succeeded",
    ):
        assert line in log, line
    assert "/healthz" not in log

    m = op.metrics()
    assert m[f'llmtrain_operator_jobs{{namespace="{h.ns}",phase="Succeeded"}}'] == 1
    assert m["llmtrain_operator_pods_created_total"] == 4
    assert m['llmtrain_operator_stage_duration_seconds_count{type="sft"}'] == 1
    assert m["llmtrain_operator_job_time_to_running_seconds_count"] >= 1
    assert m['llmtrain_operator_reconciles_total{result="ok"}'] > 0
    assert 'llmtrain_operator_reconciles_total{result="error"}' not in m


def test_a_job_that_cannot_run_in_pods_fails_before_any_pod(
    start_operator: Any, h: Harness
) -> None:
    """Valid for `llmtrain run` (the CRD accepts it), but not on a cluster: a relative path
    and no storage to carry the output. The operator has no default PVC here."""
    start_operator("--standalone")
    body = h.job_manifest("local", stages=("sft", "dpo"))
    body["spec"]["stages"][1]["dataset"]["source"] = "data/prefs.jsonl"
    del body["spec"]["storage"]
    h.apply(body)
    st = h.wait_phase("local", "Failed")
    failed = h.condition("local", "Failed")
    assert failed and failed["reason"] == "ValidationFailed"
    assert "spec.storage: no storage that outlives the pods" in failed["message"]
    assert "spec.stages[1].dataset.source: relative path 'data/prefs.jsonl'" in failed["message"]
    assert st.get("completionTime") and not h.pod_names("local")
    assert "ValidationFailed" in [e["reason"] for e in h.events("local")]


def test_spec_is_immutable_unless_suspended(start_operator: Any, h: Harness) -> None:
    """The CRD's CEL transition rules, on the real apiserver, with status writes still ok."""
    start_operator("--standalone")
    h.apply(h.job_manifest("frozen", stages=("sft",), workers=1))
    h.wait_phase("frozen", "Running")
    with pytest.raises(Exception, match=r"spec.resources: Invalid value: .*is immutable"):
        h.patch("frozen", {"spec": {"resources": {"workers": 3}}})
    with pytest.raises(Exception, match=r"spec.checkpointing: .*is immutable"):  # absent before
        h.patch("frozen", {"spec": {"checkpointing": {"everySteps": 5}}})
    # The driver's port too: the pods and the operator's scrape both depend on it.
    with pytest.raises(Exception, match=r"spec.monitoring: .*is immutable"):
        h.patch("frozen", {"spec": {"monitoring": {"metricsPort": 9700}}})
    assert h.job("frozen")["spec"]["resources"]["workers"] == 1
    h.patch("frozen", {"spec": {"suspend": True}})
    h.wait_phase("frozen", "Suspended")
    h.patch("frozen", {"spec": {"resources": {"workers": 2}, "checkpointing": {"everySteps": 5}}})
    assert h.job("frozen")["spec"]["resources"]["workers"] == 2
