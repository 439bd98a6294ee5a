"""The operator as a deployment runs it: killed and restarted mid-job, two replicas with
kopf peering, and nothing but the chart's RBAC.

    pytest -m cluster tests/cluster/operator_tests/test_operator_ha.py
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from typing import Any

import pytest

from tests.cluster.operator_tests.harness import Harness, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_restarted_operator_creates_no_duplicates_and_keeps_status(
    start_operator: Any, h: Harness
) -> None:
    first = start_operator("--standalone")
    h.apply(h.job_manifest("durable"))
    h.wait_phase("durable", "Running")
    before = h.status("durable")
    first.stop(signal.SIGKILL)  # no graceful shutdown

    # While no operator runs, a worker dies.
    h.end_pod("durable-sft-a1-1", "Failed", exit_code=137)
    second = start_operator("--standalone")
    h.wait_pods({"durable-sft-a2-0", "durable-sft-a2-1"})
    h.wait_phase("durable", "Running")
    st = h.status("durable")
    assert st["startTime"] == before["startTime"]
    assert st["stages"][0]["startTime"] == before["stages"][0]["startTime"]
    assert (st["stages"][0]["attempt"], st["stages"][0]["restarts"]) == (2, 1)
    created = [c for c in st["conditions"] if c["type"] == "Created"]
    assert created == [c for c in before["conditions"] if c["type"] == "Created"]
    assert h.pod_names("durable") == {"durable-sft-a2-0", "durable-sft-a2-1"}
    assert second.metrics()["llmtrain_operator_pods_created_total"] == 2

    # A third operator, started on a steady job, has nothing to create.
    second.stop()
    third = start_operator("--standalone")
    wait_until("a few passes", lambda: third.reconciles() >= 3, timeout=15)
    assert third.metrics()["llmtrain_operator_pods_created_total"] == 0
    assert h.pod_names("durable") == {"durable-sft-a2-0", "durable-sft-a2-1"}
    assert h.status("durable")["stages"] == h.status("durable")["stages"]


def test_two_replicas_only_the_leader_acts(cluster: Any, start_operator: Any, h: Harness) -> None:
    name = f"ha-{uuid.uuid4().hex[:6]}"
    # The chart creates the peering object (templates/peering.yaml).
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        ),
    )
    args = ("--peering", name, "--peering-lifetime", "4")
    standby = start_operator(*args, "--priority", "10")
    leader = start_operator(*args, "--priority", "20")
    peers = wait_until(
        "both replicas in the peering object",
        lambda: len(cluster.get("clusterkopfpeering", name).get("status") or {}) == 2,
        timeout=20,
    )
    assert peers

    h.apply(h.job_manifest("guarded"))
    h.wait_phase("guarded", "Running")
    wait_until("leader reconciled", lambda: leader.reconciles() > 0)
    time.sleep(2)  # a couple of resyncs
    assert standby.reconciles() == 0
    assert leader.metrics()["llmtrain_operator_pods_created_total"] == 2
    assert standby.metrics()["llmtrain_operator_pods_created_total"] == 0

    # The leader dies without saying goodbye; the standby takes over once its peer entry
    # expires, and carries the job on.
    leader.stop(signal.SIGKILL)
    h.end_pod("guarded-sft-a1-0", "Succeeded")
    h.wait_pods({"guarded-dpo-a1-0", "guarded-dpo-a1-1"}, timeout=40)
    assert standby.reconciles() > 0
    assert h.pod_names("guarded") >= {"guarded-sft-a1-0", "guarded-dpo-a1-0", "guarded-dpo-a1-1"}
    cluster.kubectl("delete", "clusterkopfpeering", name, check=False)


def test_operator_needs_only_the_chart_rules(cluster: Any, chart_rbac: dict[str, Any]) -> None:
    """Every test here runs the operator as the chart's ServiceAccount; this pins down what
    that account may do, so a rule the operator needs cannot silently go missing."""
    sa = f"system:serviceaccount:llmtrain-system:{chart_rbac['sa']}"

    def can(verb: str, resource: str) -> bool:
        out = cluster.kubectl(
            "auth", "can-i", verb, resource, f"--as={sa}", "--all-namespaces", check=False
        )
        return bool(out.strip() == "yes")

    needed = [
        ("watch", "llmtrainingjobs.llmtrain.io"),
        ("patch", "llmtrainingjobs.llmtrain.io"),
        ("delete", "llmtrainingjobs.llmtrain.io"),
        ("patch", "llmtrainingjobs.llmtrain.io/status"),
        ("watch", "pods"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "configmaps"),
        ("delete", "configmaps"),
        ("create", "services"),
        ("delete", "services"),
        ("create", "events"),
        ("watch", "clusterkopfpeerings.kopf.dev"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "namespaces"),
    ]
    assert [n for n in needed if not can(*n)] == []
    assert not can("create", "secrets") and not can("get", "secrets")


def test_watches_only_the_given_namespaces(cluster: Any, start_operator: Any, h: Harness) -> None:
    other = Harness(cluster, f"op-other-{uuid.uuid4().hex[:6]}")
    cluster.create_namespace(other.ns)
    try:
        start_operator("--standalone", "--namespace", h.ns, all_namespaces=False)
        h.apply(h.job_manifest("mine", stages=("sft",), workers=1))
        other.apply(other.job_manifest("theirs", stages=("sft",), workers=1))
        h.wait_phase("mine", "Running")
        time.sleep(2)
        assert other.status("theirs") == {} and not other.pod_names("theirs")
    finally:
        cluster.kubectl("delete", "namespace", other.ns, "--wait=false", check=False)


def test_failover_after_sigkill_and_a_standby_exports_no_job_series(
    cluster: Any, start_operator: Any, h: Harness
) -> None:
    """With the chart's peering lifetime (15 s): the time from a SIGKILLed leader to the
    standby acting, and a replica that goes standby drops its per-job series (else
    LLMTrainJobFailed would fire forever from what it saw while it was active)."""
    name = f"ha-{uuid.uuid4().hex[:6]}"
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        ),
    )
    lifetime = 15
    args = ("--peering", name, "--peering-lifetime", str(lifetime))
    first = start_operator(*args, "--priority", "10")
    h.apply(h.job_manifest("watched", stages=("sft",)))
    h.wait_phase("watched", "Running")
    series = f'llmtrain_operator_job_phase{{job="watched",namespace="{h.ns}",phase="Running"}}'
    wait_until("the job's series", lambda: first.metrics().get(series) == 1)

    leader = start_operator(*args, "--priority", "20")  # outranks the first: it pauses
    wait_until("standby drops per-job series", lambda: series not in first.metrics(), timeout=30)
    assert not any('job="watched"' in k for k in first.metrics())
    wait_until("the leader exports them", lambda: leader.metrics().get(series) == 1, timeout=30)

    leader.stop(signal.SIGKILL)
    killed = time.monotonic()
    h.end_pod("watched-sft-a1-1", "Failed", exit_code=137)  # needs someone to act
    h.wait_pods({"watched-sft-a2-0", "watched-sft-a2-1"}, timeout=lifetime + 45)
    failover = time.monotonic() - killed
    print(f"failover after SIGKILL with a {lifetime}s peering lifetime: {failover:.1f}s")
    assert failover < lifetime + 15, failover
    wait_until(
        "the survivor exports them again",
        lambda: any('job="watched"' in k for k in first.metrics()),
    )
    cluster.kubectl("delete", "clusterkopfpeering", name, check=False)
