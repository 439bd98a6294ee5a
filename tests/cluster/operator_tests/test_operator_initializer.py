"""The initializer under the real operator: one CPU-only pod before the first gang; a failed
preflight fails the job (PreflightFailed, with the problems' paths) and no GPU pod is ever
created; a passed one starts the gang and puts the figures in the status.

    pytest -m cluster tests/cluster/operator_tests/test_operator_initializer.py

kwok runs no containers, so the test plays the initializer pod's outcome as the kubelet
would report it: exit code and termination message (harness `end_pod` plus the message);
the preflight itself is tested for real in tests/trainer/test_preflight.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.operator_tests.harness import Harness

pytestmark = [pytest.mark.cluster]


def _end_init(h: Harness, name: str, exit_code: int, message: str) -> None:
    """The initializer's container ended with this code and termination message."""
    phase = "Succeeded" if exit_code == 0 else "Failed"
    h.cluster.set_pod_phase(h.ns, name, phase, exit_code, message=message)


def test_a_failed_preflight_fails_the_job_and_creates_no_gpu_pod(
    start_operator: Any, h: Harness
) -> None:
    start_operator("--standalone", "--initializer", "--gpu-memory", "80Gi")
    h.apply(h.job_manifest("broken", stages=("sft",)))
    h.wait_pods({"broken-init-1"})
    pod = h.pods()["broken-init-1"]
    (c,) = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["command"][:2] == ["llmtrain", "initialize"]
    assert h.status("broken")["phase"] == "Initializing"
    assert h.pod_names("broken") == {"broken-init-1"}
    problems = (
        "spec.stages[0].dataset: /storage/sft.jsonl[train] row(s) 7: the assistant mask is empty"
    )
    _end_init(h, "broken-init-1", 2, problems)
    h.wait_phase("broken", "Failed")
    failed = h.condition("broken", "Failed")
    assert failed and failed["reason"] == "PreflightFailed" and problems in failed["message"]
    time.sleep(3)  # a few passes: still no gang
    assert h.pod_names("broken") == {"broken-init-1"}  # no GPU pod, the failed one for logs
    reasons = [e["reason"] for e in h.events("broken")]
    assert reasons.count("PreflightFailed") == 1, reasons


def test_a_passed_preflight_starts_the_gang_with_the_figures(
    start_operator: Any, h: Harness
) -> None:
    start_operator("--standalone", "--initializer")
    h.apply(h.job_manifest("fine", stages=("sft",), workers=1))
    h.wait_pods({"fine-init-1"})
    figures = {"stages": [{"stage": "sft", "kept": 95, "dropped": 5, "tokensP50": 41,
                           "tokensMax": 64, "memoryBytes": 6 * 2**30}]}  # fmt: skip
    _end_init(h, "fine-init-1", 0, json.dumps(figures))
    h.wait_pods({"fine-sft-a1-0"})
    ini = h.status("fine")["initializer"]
    assert ini["phase"] == "Succeeded"
    assert ini["preflight"][0] == {**figures["stages"][0]}
