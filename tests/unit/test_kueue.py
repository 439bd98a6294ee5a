"""Kueue admission, pure: the Workload builder, reading Kueue's status, and the state
machine's Queued / admitted / evicted steps (the cluster side: tests/cluster/operator_tests/
test_operator_kueue.py).

    pytest tests/unit/test_kueue.py
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from llmtrain.operator import api, kueue, layout, state, status
from llmtrain.operator.api import Phase
from llmtrain.operator.progress import PodView
from tests.unit.test_state import DOC, World

ADMITTED = kueue.Admission("sft", admitted=True, cluster_queue="cq", flavors=["gpu"])
WAITING = kueue.Admission("sft", "gpu", message="insufficient unused quota for nvidia.com/gpu")
EVICTED = kueue.Admission("sft", evicted="Preempted", message="Preempted to accommodate x")


@dataclass
class QWorld(World):
    queue: kueue.Admission | None = WAITING

    def step(self, seconds: float = 1, scrape: Any = None) -> status.Decision:
        self.now += timedelta(seconds=seconds)
        self.seen = list(self.pods.values())
        d = state.decide(self.job(), self.seen, self.now, scrape, self.policy, self.queue)
        self.status, self.last = d.status, d
        for name in d.delete_pods:
            del self.pods[name]
        if d.ensure:
            stage, attempt = d.ensure
            for rank in range(self.job().spec.resources.workers):
                name = f"j-{stage}-a{attempt}-{rank}"
                self.pods.setdefault(name, PodView(name, stage, attempt, rank, owner_uid="u1"))
        return d


def job(**labels: str) -> api.LLMTrainingJob:
    doc = copy.deepcopy(DOC)
    doc["metadata"]["labels"] = labels
    doc["spec"]["resources"]["priorityClassName"] = "high"
    return api.parse_job(doc)


def test_only_a_job_labelled_with_a_queue_is_kueue_managed() -> None:
    assert kueue.queue_name(job()) is None
    assert kueue.queue_name(job(**{kueue.QUEUE_LABEL: "gpu"})) == "gpu"


def test_the_workload_is_one_podset_of_the_whole_gang_owned_by_the_job() -> None:
    wl = kueue.build_workload(job(**{kueue.QUEUE_LABEL: "gpu"}), "sft", 1000, layout.JobDefaults())
    assert (wl["apiVersion"], wl["kind"]) == ("kueue.x-k8s.io/v1beta2", "Workload")
    assert wl["metadata"]["name"] == "j-sft" and wl["metadata"]["namespace"] == "ns"
    assert wl["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert wl["metadata"]["labels"] == {layout.LABEL_JOB: "j", layout.LABEL_STAGE: "sft"}
    spec = wl["spec"]
    assert spec["queueName"] == "gpu" and spec["priority"] == 1000
    assert spec["priorityClassRef"] == {
        "group": "scheduling.k8s.io",
        "kind": "PriorityClass",
        "name": "high",
    }
    (ps,) = spec["podSets"]
    assert ps["count"] == 2
    res = ps["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert res["nvidia.com/gpu"] == "1"
    assert ps["template"]["spec"]["priorityClassName"] == "high"


def _wl(*conds: tuple[str, str, str], admission: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"type": t, "status": s, "reason": r, "message": r} for t, s, r in conds]
    }
    if admission:
        status["admission"] = admission
    return {"metadata": {"name": "j-sft"}, "status": status}


def test_reading_kueue_status() -> None:
    assert not kueue.admission("sft", None).admitted
    waiting = kueue.admission("sft", _wl(("QuotaReserved", "False", "Pending")))
    assert not waiting.admitted and waiting.message == "Pending"
    adm = {
        "clusterQueue": "cq",
        "podSetAssignments": [{"name": "workers", "flavors": {"cpu": "f"}}],
    }
    ok = kueue.admission("sft", _wl(("Admitted", "True", "Admitted"), admission=adm))
    assert ok.admitted and ok.flavors == ["f"] and ok.cluster_queue == "cq"
    ev = kueue.admission("sft", _wl(("Admitted", "True", "A"), ("Evicted", "True", "Preempted")))
    assert not ev.admitted and ev.evicted == "Preempted"


def test_the_flavors_scheduling_is_added_to_the_pods() -> None:
    tol = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    sel, tols = kueue.flavor_scheduling(
        [{"spec": {"nodeLabels": {"pool": "a"}, "tolerations": [tol]}}]
    )
    pod = {"spec": {"nodeSelector": {"zone": "z"}, "tolerations": [tol]}}
    out = kueue.inject(pod, sel, tols)
    assert out["spec"]["nodeSelector"] == {"zone": "z", "pool": "a"}
    assert out["spec"]["tolerations"] == [tol]  # not twice
    assert pod["spec"]["nodeSelector"] == {"zone": "z"}  # the input is left alone


def test_no_pod_before_admission_then_the_gang_starts() -> None:
    w = QWorld()
    d = w.step()
    assert d.ensure is None and w.status is not None and w.status.phase == Phase.Queued
    assert w.cur().phase == Phase.Queued and w.cur().attempt == 0
    assert [e.reason for e in d.events] == [status.REASON_QUEUED]
    assert w.step(30).events == []  # still waiting: said once
    w.queue = ADMITTED
    d = w.step()
    assert d.ensure == ("sft", 1) and d.queued_seconds == 31
    assert status.REASON_ADMITTED in [e.reason for e in d.events]
    queued = w.cond(status.COND_QUEUED)
    assert queued is not None and queued.status == "False"


def test_eviction_tears_the_gang_down_head_first_and_requeues_then_resumes() -> None:
    w = QWorld(queue=ADMITTED)
    w.step()
    w.step()
    w.run_all()
    w.step()
    assert w.status is not None and w.status.phase == Phase.Running
    w.queue = EVICTED
    d = w.step()
    assert w.status.phase == Phase.Suspended and w.status.reason == "Preempted"
    assert d.delete_pods == ["j-sft-a1-0"] and d.events[0].reason == "Preempted"
    assert w.step().delete_pods == ["j-sft-a1-1"]
    assert w.step().ensure is None and not w.pods
    w.queue = WAITING  # the reconciler deleted the evicted Workload; a new one queues
    w.step()
    assert w.status.phase == Phase.Queued
    w.queue = ADMITTED
    d = w.step()
    assert d.ensure == ("sft", 2) and w.cur().restarts == 0
    assert {status.REASON_ADMITTED, status.REASON_RESUMED} <= {e.reason for e in d.events}


def test_a_stage_hand_off_queues_the_next_stage() -> None:
    w = QWorld(queue=ADMITTED)
    w.step()
    w.step()
    w.run_all()
    w.step()
    w.set(0, "Succeeded")
    d = w.step()
    assert w.status is not None and w.status.current_stage == "dpo" and d.ensure is None
    assert w.status.phase == Phase.Queued
    w.queue = kueue.Admission("dpo", admitted=True)
    assert w.step().ensure == ("dpo", 1)


def test_without_a_queue_nothing_changes() -> None:
    w = QWorld(queue=None)
    assert w.step().ensure == ("sft", 1)
