"""Suspend and resume (the Kueue contract) and ttlSecondsAfterFinished, on the real operator.

pytest -m cluster tests/cluster/operator_tests/test_operator_suspend_ttl.py
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.operator_tests.harness import Harness, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_suspend_removes_pods_and_resume_starts_a_new_attempt(
    start_operator: Any, h: Harness
) -> None:
    start_operator("--standalone")
    h.apply(h.job_manifest("pausable"))
    h.wait_phase("pausable", "Running")
    h.patch("pausable", {"spec": {"suspend": True}})
    st = h.wait_phase("pausable", "Suspended")
    assert st["stages"][0]["phase"] == "Suspended"
    h.wait_gone({"pausable-sft-a1-0", "pausable-sft-a1-1"})
    suspended = h.condition("pausable", "Suspended")
    assert suspended and suspended["status"] == "True"
    time.sleep(2)  # a few resyncs: nothing is created while suspended
    assert not h.pod_names("pausable")

    h.patch("pausable", {"spec": {"suspend": False}})
    h.wait_pods({"pausable-sft-a2-0", "pausable-sft-a2-1"})
    st = h.wait_phase("pausable", "Running")
    assert (st["stages"][0]["attempt"], st["stages"][0]["restarts"]) == (2, 0)
    resumed = h.condition("pausable", "Suspended")
    assert resumed and (resumed["status"], resumed["reason"]) == ("False", "Resumed")
    reasons = [e["reason"] for e in h.events("pausable")]
    assert "Suspended" in reasons and "Resumed" in reasons


def test_job_created_suspended_creates_no_pods_until_resumed(
    start_operator: Any, h: Harness
) -> None:
    # Admission by Kueue (Workloads) is test_operator_kueue.py; this is a plain suspend.
    start_operator("--standalone")
    h.apply(h.job_manifest("queued", stages=("sft",), suspend=True))
    h.wait_phase("queued", "Suspended")
    time.sleep(2)
    assert not h.pod_names("queued")
    # Scheduling fields may change while suspended, and apply to the pods made on resume.
    h.patch("queued", {"spec": {"resources": {"nodeSelector": {"type": "kwok"}}, "suspend": False}})
    h.wait_pods({"queued-sft-a1-0", "queued-sft-a1-1"})
    pod = h.pods()["queued-sft-a1-0"]
    assert pod["spec"]["nodeSelector"] == {"type": "kwok"}


def test_ttl_deletes_the_finished_job_and_its_children(start_operator: Any, h: Harness) -> None:
    start_operator("--standalone")
    h.apply(h.job_manifest("shortlived", stages=("sft",), runPolicy={"ttlSecondsAfterFinished": 2}))
    h.wait_phase("shortlived", "Running")
    h.end_pod("shortlived-sft-a1-0", "Succeeded")
    h.wait_phase("shortlived", "Succeeded")
    assert h.pod_names("shortlived") == {"shortlived-sft-a1-0"}  # kept for logs until the TTL
    wait_until(
        "job deleted",
        lambda: h.cluster.kubectl("get", "llmtj", "-n", h.ns, "-o", "name") == "",
        timeout=20,
    )
    # The garbage collector removes what the job owned.
    wait_until(
        "children gone",
        lambda: (
            not h.pod_names("shortlived")
            and h.cluster.kubectl(
                "get", "cm,svc", "-n", h.ns, "-l", "llmtrain.io/job=shortlived", "-o", "name"
            )
            == ""
        ),
        timeout=30,
    )
