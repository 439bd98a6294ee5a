"""The operator's small runtime parts without a cluster: metric parsing, its own metrics,
the status patch, the per-job cache that lets a pass skip the GET, and the login in a pod."""

from __future__ import annotations

import os
import subprocess
import sys

import kopf
import pytest
from prometheus_client import generate_latest

from llmtrain.operator import api, kube, progress, reconcile
from llmtrain.operator.metrics import OperatorMetrics

DRIVER = """\
# HELP llmtrain_train_step optimizer steps done
# TYPE llmtrain_train_step gauge
llmtrain_train_step{job="j",namespace="n",stage="sft"} 120.0
# TYPE llmtrain_train_loss gauge
llmtrain_train_loss{job="j",namespace="n",stage="sft"} 1.5
# TYPE llmtrain_tokens counter
llmtrain_tokens_total{job="j",namespace="n",stage="sft"} 4096.0
llmtrain_tokens_created{job="j",namespace="n",stage="sft"} 1.7e9
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 3.0
"""


def test_parse_metrics_keeps_llmtrain_samples() -> None:
    assert progress.parse_metrics(DRIVER) == {
        "llmtrain_train_step": 120.0,
        "llmtrain_train_loss": 1.5,
        "llmtrain_tokens_total": 4096.0,
    }


def test_operator_metrics_use_the_contract_names() -> None:
    m = OperatorMetrics()
    m.job_phase("a", "j1", "Running")
    m.job_phase("a", "j2", "Running")
    m.job_phase("b", "j3", "Failed")
    m.job_phase("a", "j2", None)  # deleted
    m.stage_duration.labels(type="sft").observe(120)
    m.time_to_running.observe(3)
    m.reconciles.labels(result="ok").inc()
    m.pods_created.inc(2)
    m.stage_restarts.labels(namespace="a", job="j1", reason="Stalled").inc()
    m.stage_restarts.labels(namespace="b", job="j3", reason="PodFailed").inc()
    text = generate_latest(m.registry).decode()
    for line in (
        'llmtrain_operator_jobs{namespace="a",phase="Running"} 1.0',
        'llmtrain_operator_jobs{namespace="b",phase="Failed"} 1.0',
        'llmtrain_operator_job_phase{job="j3",namespace="b",phase="Failed"} 1.0',
        'llmtrain_operator_stage_duration_seconds_count{type="sft"} 1.0',
        "llmtrain_operator_job_time_to_running_seconds_count 1.0",
        'llmtrain_operator_reconciles_total{result="ok"} 1.0',
        "llmtrain_operator_pods_created_total 2.0",
        'llmtrain_operator_stage_restarts_total{job="j1",namespace="a",reason="Stalled"} 1.0',
    ):
        assert line in text, line
    assert "process_resident_memory_bytes" in text
    m.job_phase("b", "j3", None)  # deleted: its restarts go too
    assert 'job="j3"' not in generate_latest(m.registry).decode()
    m.forget_jobs()  # standby: no per-job series at all
    text = generate_latest(m.registry).decode()
    assert 'job="j1"' not in text and "llmtrain_operator_jobs{" not in text


def test_status_patch_nulls_what_is_unset() -> None:
    st = api.LLMTrainingJobStatus(phase=api.Phase.Running, current_stage="sft")
    patch = reconcile.status_patch(st)
    assert patch["phase"] == "Running" and patch["currentStage"] == "sft"
    assert patch["completionTime"] is None and patch["loss"] is None  # removed by merge patch
    assert "startTime" in patch and "lastTransitionTime" not in patch


def test_slot_awaits_the_echo_of_its_own_write() -> None:
    slot = reconcile.JobCache()

    def body(rv: str) -> dict[str, object]:
        return {"metadata": {"resourceVersion": rv}}

    assert slot.seen(body("1")) and slot.body == body("1")
    slot.wrote(body("3"))
    assert slot.body == body("3")
    # An event older than our write: the cache might now be stale, so drop it (GET next).
    assert slot.seen(body("2")) and slot.body is None
    slot.wrote(body("5"))
    echo = body("5")
    assert not slot.seen(echo)  # the echo: no pass needed
    assert slot.body is echo and slot.echo is None  # the copy kopf holds too, not a second one
    assert slot.seen(body("6")) and slot.body == body("6")


@pytest.mark.parametrize(
    ("host", "server"),
    [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")],
)
def test_login_in_a_pod_uses_its_service_account_without_dns(
    tmp_path, monkeypatch, host: str, server: str
) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "namespace").write_text("llmtrain-system")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = kube.login(settings=kopf.OperatorSettings(), logger=None)
    assert info is not None
    assert (info.server, info.token, info.ca_path) == (server, "tok", str(tmp_path / "ca.crt"))
    assert info.default_namespace == "llmtrain-system"


@pytest.mark.parametrize("client", [True, False], ids=["official-client", "kopf-only"])
def test_login_outside_a_pod_reads_the_kubeconfig(tmp_path, client: bool) -> None:
    """With the kubernetes client installed (the tests' venv) and without it (the image).
    A fresh process: the client reads KUBECONFIG when it is imported."""
    config = tmp_path / "config"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    code = (
        ("" if client else "import sys; sys.modules['kubernetes'] = None  # not installed\n")
        + "import kopf, sys\n"
        + "from llmtrain.operator import kube\n"
        + "info = kube.login(settings=kopf.OperatorSettings(), logger=kube.log)\n"
        + "print(info.server, info.token, sys.modules.get('kubernetes') is not None)\n"
    )
    env = {**os.environ, "KUBECONFIG": str(config)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["https://127.0.0.1:6443", "abc", str(client)], r.stderr


@pytest.mark.parametrize(
    ("meta", "status", "awaits"),
    [
        ({}, {}, True),  # new: kopf adds its finalizer first, then the first pass runs
        ({"finalizers": ["llmtrain.io/operator"]}, {}, False),
        ({"deletionTimestamp": "2026-12-01T00:00:00Z"}, {}, False),
        ({}, {"phase": "Succeeded"}, False),  # no timer, so kopf adds no finalizer
    ],
)
def test_a_new_job_waits_for_kopfs_finalizer(meta, status, awaits: bool) -> None:
    from llmtrain.operator import handlers

    body = kopf.Body({"metadata": {"name": "j", **meta}, "spec": {}, "status": status})
    assert handlers._awaits_finalizer(body) is awaits
