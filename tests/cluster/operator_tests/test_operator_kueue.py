"""Admission by a real Kueue: whole gangs or nothing, preemption that checkpoints first.

    pytest -m cluster tests/cluster/operator_tests/test_operator_kueue.py -s   # -s: timings

Kueue v0.17.0 runs beside the control plane (kueue_fixture.py), with LLMTrainingJob as an
external framework; the operator creates a Workload per stage and no pod before Kueue
admits it. Every test makes its own ResourceFlavor, ClusterQueue (cluster-scoped, so named
after the namespace) and LocalQueue. kwok nodes have 8 GPUs each; jobs ask 4 per worker.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest

from llmtrain.operator.manifests import TERMINATION_GRACE_SECONDS
from tests.cluster.operator_tests.harness import Harness, free_port, wait_until
from tests.cluster.operator_tests.kueue_fixture import kueue  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("kueue")]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TOLERATION = {"key": "llmtrain.test/flavor", "operator": "Exists", "effect": "NoSchedule"}


def make_queue(h: Harness, gpus: int = 8, strategy: str = "BestEffortFIFO") -> str:
    """A flavor (kwok nodes, plus a toleration to inject), a ClusterQueue with `gpus` GPUs
    that preempts lower priorities, and a LocalQueue `gpu` in the test namespace."""
    name = h.ns
    objs = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": name},
            "spec": {"nodeLabels": {"type": "kwok"}, "tolerations": [TOLERATION]},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": h.ns},
                },
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "queueingStrategy": strategy,
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": name,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "64"},
                                    {"name": "memory", "nominalQuota": "256Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "gpu", "namespace": h.ns},
            "spec": {"clusterQueue": name},
        },
    ]
    h.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    )
    wait_until(
        "ClusterQueue active",
        lambda: any(
            c["type"] == "Active" and c["status"] == "True"
            for c in h.cluster.get("clusterqueue", name).get("status", {}).get("conditions", [])
        ),
    )
    return name


@pytest.fixture
def queue(h: Harness) -> Any:
    name = make_queue(h)
    yield name
    for kind in ("clusterqueue", "resourceflavor"):
        h.cluster.kubectl("delete", kind, name, "--wait=false", check=False)


def queued_job(
    h: Harness, name: str, workers: int = 2, stages: tuple[str, ...] = ("sft",), **spec: Any
) -> dict[str, Any]:
    body = h.job_manifest(name, stages=stages, workers=workers, **spec)
    body["metadata"]["labels"] = {QUEUE_LABEL: "gpu"}
    body["spec"]["resources"]["gpusPerWorker"] = 4
    return body


def gang(job: str, stage: str, attempt: int, workers: int = 2) -> set[str]:
    return {f"{job}-{stage}-a{attempt}-{r}" for r in range(workers)}


def workloads(h: Harness) -> dict[str, dict[str, Any]]:
    out = h.cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-n", h.ns, "-o", "json")
    return {w["metadata"]["name"]: w for w in json.loads(out)["items"]}


def admitted_at(wl: dict[str, Any]) -> datetime:
    c = next(c for c in wl["status"]["conditions"] if c["type"] == "Admitted")
    return datetime.fromisoformat(c["lastTransitionTime"])


def reasons(h: Harness, job: str) -> list[str]:
    return [e["reason"] for e in sorted(h.events(job), key=lambda e: e["metadata"]["name"])]


def test_a_second_job_waits_queued_without_pods_until_the_first_succeeds(
    start_operator: Any, h: Harness, queue: str
) -> None:
    op = start_operator("--standalone")
    t0 = time.monotonic()
    h.apply(queued_job(h, "first"))
    h.wait_pods(gang("first", "sft", 1))
    print(f"kueue: first job applied -> all pods Running in {time.monotonic() - t0:.1f}s")
    wl = workloads(h)["first-sft"]
    assert wl["spec"]["podSets"][0]["count"] == 2 and wl["spec"]["queueName"] == "gpu"
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "LLMTrainingJob"
    pods = h.pods("llmtrain.io/job=first")
    created = max(datetime.fromisoformat(p["metadata"]["creationTimestamp"]) for p in pods.values())
    print(f"kueue: Admitted -> last pod created: {(created - admitted_at(wl)).total_seconds()}s")
    for p in pods.values():  # the admitted flavor's scheduling
        assert p["spec"]["nodeSelector"]["type"] == "kwok"
        assert TOLERATION in p["spec"]["tolerations"]
    h.wait_phase("first", "Running")

    h.apply(queued_job(h, "second"))
    st = h.wait_phase("second", "Queued")
    wait_until(  # Kueue's reason, and the queue
        "Kueue's reason in the Queued condition",
        lambda: "insufficient" in (m := h.condition("second", "Queued")["message"]) and m,
    )
    assert "queue gpu" in h.condition("second", "Queued")["message"]
    assert h.table("second")["PHASE"] == "Queued"
    time.sleep(3)  # several resyncs: still no pod
    assert not h.pod_names("second") and st["stages"][0]["phase"] == "Queued"

    h.end_pod("first-sft-a1-0", "Succeeded")
    h.wait_phase("first", "Succeeded")
    h.wait_pods(gang("second", "sft", 1), timeout=30)
    h.wait_phase("second", "Running")
    wait_until("first's Workload released", lambda: "first-sft" not in workloads(h))
    assert {"Queued", "Admitted"} <= set(reasons(h, "second"))
    queued = op.metrics()[
        f'llmtrain_operator_job_queued_seconds_total{{job="second",namespace="{h.ns}"}}'
    ]
    assert queued >= 3


def test_a_gang_that_does_not_fit_never_creates_a_pod_and_deleting_it_deletes_its_workload(
    start_operator: Any, h: Harness, queue: str
) -> None:
    start_operator("--standalone")
    h.apply(queued_job(h, "huge", workers=3))  # 12 GPUs > 8
    h.wait_phase("huge", "Queued")
    wait_until("Workload created", lambda: "huge-sft" in workloads(h))
    time.sleep(3)
    assert not h.pod_names("huge")
    assert "QuotaReserved" not in {
        c["type"]
        for c in workloads(h)["huge-sft"].get("status", {}).get("conditions", [])
        if c["status"] == "True"
    }
    h.cluster.kubectl("delete", "llmtj", "huge", "-n", h.ns, "--wait=false")
    wait_until("Workload deleted with its job", lambda: "huge-sft" not in workloads(h))


def test_higher_priority_preempts_a_running_job_which_checkpoints_and_resumes(
    start_operator: Any, h: Harness, queue: str, drivers: Any
) -> None:
    start_operator("--standalone")
    for name, value in (("low", 10), ("high", 1000)):
        h.cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": f"{h.ns}-{name}"},
                    "value": value,
                }
            ),
        )
    port = free_port()
    low = queued_job(h, "low", monitoring={"metricsPort": port})
    low["spec"]["resources"]["priorityClassName"] = f"{h.ns}-low"
    h.apply(low)
    h.wait_pods(gang("low", "sft", 1))
    h.wait_phase("low", "Running")
    assert workloads(h)["low-sft"]["spec"]["priority"] == 10
    head = "low-sft-a1-0"
    driver = drivers(h.pods()[head]["status"]["podIP"], port, "low", "sft", h.ns)
    driver.set(train_step=30, train_total_steps=100, checkpoint_step=30)
    wait_until("progress read", lambda: h.status("low").get("progress") == "30/100", timeout=15)
    # The driver is still writing its checkpoint when SIGTERM comes: its pod stays until then.
    h.cluster.kubectl(
        "patch", "pod", head, "-n", h.ns, "--type=merge",
        "-p", '{"metadata":{"finalizers":["llmtrain.test/checkpointing"]}}',
    )  # fmt: skip

    high = queued_job(h, "high")
    high["spec"]["resources"]["priorityClassName"] = f"{h.ns}-high"
    with h.watch_pod(head, "{.metadata.deletionGracePeriodSeconds}") as graces:
        h.apply(high)
        st = h.wait_phase("low", "Suspended")
        assert st["reason"] == "Preempted"
        wait_until("head terminating", lambda: h.pods()[head]["metadata"].get("deletionTimestamp"))
    # ... with its whole grace period to checkpoint in (kwok, as the kubelet, then ends it).
    assert [g for g in graces if g][:1] == [str(TERMINATION_GRACE_SECONDS)], graces
    time.sleep(2)  # the gang waits for its head's checkpoint; the preemptor waits for the gang
    assert gang("low", "sft", 1) <= set(h.pods()) and not h.pod_names("high")

    h.cluster.kubectl(
        "patch", "pod", head, "-n", h.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )
    h.wait_pods(gang("high", "sft", 1))
    assert not h.pod_names("low")
    h.wait_phase("low", "Queued")
    h.end_pod("high-sft-a1-0", "Succeeded")
    h.wait_pods(gang("low", "sft", 2))
    st = h.wait_phase("low", "Running")
    stage = st["stages"][0]
    assert stage["attempt"] == 2 and stage["restarts"] == 0
    assert stage["lastCheckpoint"].endswith("/checkpoint-30")  # the new attempt resumes there
    assert {"Preempted", "Queued", "Admitted", "Resumed"} <= set(reasons(h, "low"))


def test_a_stage_hand_off_queues_the_next_stage_behind_waiting_jobs(
    start_operator: Any, h: Harness
) -> None:
    # StrictFIFO: the order is Kueue's promise (BestEffortFIFO may admit a newer one first).
    make_queue(h, strategy="StrictFIFO")
    start_operator("--standalone")
    h.apply(queued_job(h, "chain", stages=("sft", "dpo")))
    h.wait_pods(gang("chain", "sft", 1))
    h.apply(queued_job(h, "waiting"))
    h.wait_phase("waiting", "Queued")
    # Kueue orders by creation time in whole seconds, and a tie goes either way: the dpo
    # Workload must be created at least a second after waiting's (it went first once).
    time.sleep(1)

    h.end_pod("chain-sft-a1-0", "Succeeded")
    # The dpo stage queues afresh, behind the job that was already waiting.
    h.wait_pods(gang("waiting", "sft", 1))
    st = h.wait_phase("chain", "Queued")
    assert st["currentStage"] == "dpo" and not (gang("chain", "dpo", 1) & set(h.pods()))
    assert set(workloads(h)) == {"chain-dpo", "waiting-sft"}
    h.end_pod("waiting-sft-a1-0", "Succeeded")
    h.wait_pods(gang("chain", "dpo", 1))
    h.wait_phase("chain", "Running")
    for kind in ("clusterqueue", "resourceflavor"):
        h.cluster.kubectl("delete", kind, h.ns, "--wait=false", check=False)
