"""Gang failures under the real operator: retries from the checkpoint, permanent failures,
the backoff limit, the stall watchdog and the deadline, and pods the apiserver refuses.

    pytest -m cluster tests/cluster/operator_tests/test_operator_failures.py
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmtrain.operator.reconcile import RECREATE
from tests.cluster.operator_tests.harness import Harness, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_retryable_failures_retry_then_exhaust_the_backoff_limit(
    start_operator: Any, h: Harness
) -> None:
    op = start_operator("--standalone")
    h.apply(h.job_manifest("flaky", stages=("sft",), runPolicy={"backoffLimit": 2}))
    h.wait_pods({"flaky-sft-a1-0", "flaky-sft-a1-1"})
    h.wait_phase("flaky", "Running")

    # A signal-killed worker (OOM: 137) tears the whole gang down; attempt 2 follows.
    h.end_pod("flaky-sft-a1-1", "Failed", exit_code=137)
    h.wait_pods({"flaky-sft-a2-0", "flaky-sft-a2-1"})
    h.wait_gone({"flaky-sft-a1-0", "flaky-sft-a1-1"})
    stage = h.stage("flaky", "sft")
    assert (stage["attempt"], stage["restarts"]) == (2, 1)
    assert not {"flaky-sft-a1"} & {
        s for s in h.cluster.kubectl("get", "cm,svc", "-n", h.ns, "-o", "name").split()
    }
    h.wait_phase("flaky", "Running")
    restarting = h.condition("flaky", "Restarting")
    assert restarting and restarting["status"] == "False"

    # A deleted pod (preemption, a drained node) counts the same way.
    h.cluster.kubectl("delete", "pod", "flaky-sft-a2-0", "-n", h.ns, "--wait=false")
    h.wait_pods({"flaky-sft-a3-0", "flaky-sft-a3-1"})
    assert h.stage("flaky", "sft")["restarts"] == 2
    h.wait_phase("flaky", "Running")

    # A third retryable failure is one too many for backoffLimit 2.
    h.end_pod("flaky-sft-a3-0", "Failed", exit_code=143)
    st = h.wait_phase("flaky", "Failed")
    failed = h.condition("flaky", "Failed")
    assert failed and failed["reason"] == "BackoffLimitExceeded"
    assert st["stages"][0]["attempt"] == 3 and st["stages"][0]["restarts"] == 2
    h.wait_gone({"flaky-sft-a3-1"})
    assert h.pod_names("flaky") == {"flaky-sft-a3-0"}  # the failed driver, for its logs
    reasons = [e["reason"] for e in h.events("flaky")]
    assert reasons.count("PodFailed") == 1 and "PodDeleted" in reasons, reasons
    assert "BackoffLimitExceeded" in reasons
    m = op.metrics()
    restarts = f'llmtrain_operator_stage_restarts_total{{job="flaky",namespace="{h.ns}",reason='
    assert m[restarts + '"PodFailed"}'] == 1 and m[restarts + '"PodDeleted"}'] == 1


def test_permanent_exit_code_fails_at_once(start_operator: Any, h: Harness) -> None:
    start_operator("--standalone")
    h.apply(h.job_manifest("buggy", runPolicy={"backoffLimit": 5}))
    h.wait_phase("buggy", "Running")
    h.end_pod("buggy-sft-a1-1", "Failed", exit_code=2)  # ExitCode.PERMANENT: bad data
    st = h.wait_phase("buggy", "Failed")
    failed = h.condition("buggy", "Failed")
    assert failed and failed["reason"] == "PodFailedPermanently"
    assert "exited with code 2" in failed["message"]
    assert st["stages"][0]["restarts"] == 0 and st["stages"][1]["attempt"] == 0
    # The pod that failed stays for `kubectl logs`; the running head goes, with its GPUs.
    h.wait_gone({"buggy-sft-a1-0"})
    time.sleep(3)  # a few passes: nothing else is deleted
    assert h.pod_names("buggy") == {"buggy-sft-a1-1"}
    assert not any(n.startswith("buggy-dpo") for n in h.pod_names("buggy"))


@pytest.mark.parametrize(
    ("head", "worker"),
    [(75, None), (1, None), (137, 2)],  # RETRYABLE, unknown, OOM-killed head + a worker's 2
    ids=["retryable", "unknown", "oom-beats-permanent"],
)
def test_exit_codes_that_retry(
    start_operator: Any, h: Harness, head: int, worker: int | None
) -> None:
    start_operator("--standalone")
    h.apply(h.job_manifest("codes", stages=("sft",), runPolicy={"backoffLimit": 2}))
    h.wait_phase("codes", "Running")
    if worker is not None:
        h.end_pod("codes-sft-a1-1", "Failed", exit_code=worker)
    h.end_pod("codes-sft-a1-0", "Failed", exit_code=head)
    h.wait_pods({"codes-sft-a2-0", "codes-sft-a2-1"})
    stage = h.stage("codes", "sft")
    assert (stage["attempt"], stage["restarts"]) == (2, 1)
    assert h.status("codes")["phase"] in ("Restarting", "Running")


def test_retries_back_off_and_say_when(start_operator: Any, h: Harness) -> None:
    start_operator("--standalone", "--retry-backoff", "4")
    h.apply(h.job_manifest("slow", stages=("sft",), workers=1))
    h.wait_phase("slow", "Running")
    h.end_pod("slow-sft-a1-0", "Failed", exit_code=75)
    restarting = wait_until(
        "Restarting",
        lambda: (c := h.condition("slow", "Restarting")) and c["status"] == "True" and c,
    )
    retry_after = h.stage("slow", "sft")["retryAfter"]
    assert f"retrying as attempt 2 at {retry_after} (backoff 4s)" in restarting["message"]
    h.wait_gone({"slow-sft-a1-0"})
    time.sleep(1.5)
    assert not h.pod_names("slow")  # the old gang is gone, the backoff is not over
    h.wait_pods({"slow-sft-a2-0"}, timeout=15)
    h.wait_phase("slow", "Running")
    columns = h.table("slow", "-o", "wide")
    assert (columns["STAGE"], columns["RESTARTS"]) == ("sft (1/1)", "1")
    assert columns["REASON"] == "AllPodsRunning" and columns["PHASE"] == "Running"


def test_stalled_attempt_is_restarted(start_operator: Any, h: Harness, drivers: Any) -> None:
    start_operator("--standalone")
    port = free_port()
    h.apply(
        h.job_manifest(
            "stuck",
            stages=("sft",),
            workers=1,
            monitoring={"metricsPort": port},
            runPolicy={"stallTimeoutSeconds": 3},
        )
    )
    h.wait_phase("stuck", "Running")
    ip = h.pods()["stuck-sft-a1-0"]["status"]["podIP"]
    drivers(ip, port, "stuck", "sft", h.ns).set(train_step=7, train_total_steps=100)
    h.wait_pods({"stuck-sft-a2-0"}, timeout=20)  # readable, and the step never moves
    assert h.stage("stuck", "sft")["restarts"] >= 1
    assert "Stalled" in [e["reason"] for e in h.events("stuck")]


def test_an_unreadable_driver_is_reported_not_restarted(start_operator: Any, h: Harness) -> None:
    """A port mismatch or a NetworkPolicy: the gang is healthy, only the scrape fails."""
    start_operator("--standalone")
    h.apply(
        h.job_manifest("blind", stages=("sft",), workers=1, runPolicy={"stallTimeoutSeconds": 3})
    )
    h.wait_phase("blind", "Running")
    unknown = wait_until(
        "ProgressUnknown",
        lambda: (c := h.condition("blind", "ProgressUnknown")) and c["status"] == "True" and c,
    )
    assert unknown["reason"] == "MetricsUnreadable" and "/metrics" in unknown["message"]
    time.sleep(8)  # well past stallTimeoutSeconds
    assert h.pod_names("blind") == {"blind-sft-a1-0"}
    assert h.stage("blind", "sft")["restarts"] == 0 and h.status("blind")["phase"] == "Running"
    assert [e["reason"] for e in h.events("blind")].count("MetricsUnreadable") == 1


def test_deadline_fails_the_job_and_removes_its_pods(start_operator: Any, h: Harness) -> None:
    start_operator("--standalone")
    h.apply(h.job_manifest("late", runPolicy={"activeDeadlineSeconds": 3}))
    h.wait_phase("late", "Running")
    h.wait_phase("late", "Failed", timeout=20)
    failed = h.condition("late", "Failed")
    assert failed and failed["reason"] == "DeadlineExceeded"
    h.wait_gone({"late-sft-a1-0", "late-sft-a1-1"})
    wait_until("no pods", lambda: not h.pod_names("late"))


def test_a_missing_worker_service_account_shows_on_the_job_until_it_exists(
    start_operator: Any, h: Harness
) -> None:
    # The apiserver's ServiceAccount admission refuses the pods, as in a namespace the chart
    # did not prepare (not in its jobNamespaces).
    start_operator("--standalone", "--worker-service-account", "llm-worker")
    h.apply(h.job_manifest("nosa", stages=("sft",)))
    failed = wait_until(
        "CreateFailed condition",
        lambda: (c := h.condition("nosa", "CreateFailed")) and c["status"] == "True" and c,
    )
    assert failed["reason"] == "FailedCreate"
    assert 'serviceaccount "llm-worker" not found' in failed["message"], failed
    assert f"create it in namespace '{h.ns}'" in failed["message"]
    assert h.status("nosa")["phase"] == "Pending" and not h.pod_names("nosa")
    wait_until(
        "FailedCreate event", lambda: "FailedCreate" in [e["reason"] for e in h.events("nosa")]
    )

    # Refused alike on the next tries: still one Warning, not one per retry.
    time.sleep(RECREATE + 3)
    assert [e["reason"] for e in h.events("nosa")].count("FailedCreate") == 1

    h.cluster.kubectl("create", "serviceaccount", "llm-worker", "-n", h.ns)
    h.wait_pods({"nosa-sft-a1-0", "nosa-sft-a1-1"}, timeout=RECREATE + 30)
    assert {p["spec"]["serviceAccountName"] for p in h.pods().values()} == {"llm-worker"}
    cleared = wait_until(
        "condition cleared",
        lambda: (c := h.condition("nosa", "CreateFailed")) and c["status"] == "False" and c,
    )
    assert cleared["reason"] == "PodsCreated"
    h.wait_phase("nosa", "Running")
