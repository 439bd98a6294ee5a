"""Admission through Kueue: the Workload of a stage, and what Kueue says about it. Pure.

    q = queue_name(job)                          # None: not Kueue-managed, today's behaviour
    wl = build_workload(job, "sft", priority=100, defaults=defaults)   # create it
    adm = admission(wl_from_apiserver)           # admitted? evicted? flavors to inject
    pod = inject(pod, node_selector, tolerations)   # the admitted flavor's scheduling

The operator is the job controller of Kueue's jobframework contract for LLMTrainingJob
(registered in Kueue's `integrations.externalFrameworks`): one Workload per stage, owned
by the job, with one podSet (count = workers, the head's pod spec as the template). No pod
is created until Kueue admits it. On eviction the gang is torn down head first (the
driver's SIGTERM writes the stop file and the workers checkpoint), and once no pod is
left the Workload is deleted, which releases the quota; a fresh one queues again and
the next attempt resumes from the checkpoint. A stage hand-off deletes the finished
stage's Workload and queues the next stage's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from llmtrain.operator import api, layout, manifests

GROUP, VERSION, PLURAL = "kueue.x-k8s.io", "v1beta2", "workloads"  # v1beta2: Kueue's storage
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PODSET = "workers"
FRAMEWORK = f"{api.KIND}.{api.VERSION}.{api.GROUP}"  # integrations.externalFrameworks entry

Manifest = dict[str, Any]


def queue_name(job: api.LLMTrainingJob) -> str | None:
    """The LocalQueue the job asks for: the job's `kueue.x-k8s.io/queue-name` label, as for
    every Kueue-managed kind. Without it the operator ignores Kueue."""
    labels: dict[str, Any] = (job.metadata.model_extra or {}).get("labels") or {}
    name = labels.get(QUEUE_LABEL)
    return str(name) if name else None


def workload_name(job: str, stage: str) -> str:
    """`{job}-{stage}`: one Workload per stage (hashed when too long)."""
    return str(layout._bounded(f"{job}-{stage}"))


def build_workload(
    job: api.LLMTrainingJob,
    stage: str,
    priority: int | None,
    defaults: layout.JobDefaults,
) -> Manifest:
    """The stage's Workload: one podSet of `workers` pods with the head's pod spec (every
    rank requests the same), the queue, and the priority class with its value (Kueue's
    webhook would fill it in for kinds it manages itself; for an external one the job
    controller does)."""
    name = job.metadata.name
    pod = manifests.build_worker_pod(job, stage, 1, 0, defaults)
    spec: Manifest = {
        "queueName": queue_name(job),
        "podSets": [
            {
                "name": PODSET,
                "count": job.spec.resources.workers,
                "template": {"spec": pod["spec"]},
            }
        ],
    }
    pc = job.spec.resources.priority_class_name
    if pc:
        spec["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": pc,
        }
    if priority is not None:
        spec["priority"] = priority
    meta: Manifest = {
        "name": workload_name(name, stage),
        "namespace": layout.namespace_of(job),
        "labels": {layout.LABEL_JOB: name, layout.LABEL_STAGE: stage},
    }
    if (job.metadata.model_extra or {}).get("uid"):
        meta["ownerReferences"] = [layout.owner_reference(job)]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workload", "metadata": meta, "spec": spec}


@dataclass(frozen=True)
class Admission:
    """What Kueue says about a stage's Workload, as the state machine needs it."""

    stage: str
    queue: str | None = None  # the LocalQueue
    admitted: bool = False
    evicted: str | None = None  # the Evicted condition's reason (Preempted, ...)
    message: str = ""  # why it waits, or why it was evicted
    cluster_queue: str | None = None
    flavors: list[str] = field(default_factory=list)  # ResourceFlavors of status.admission


def admission(stage: str, wl: Manifest | None) -> Admission:
    """Read a Workload (None: not created yet, or being deleted)."""
    if wl is None or wl["metadata"].get("deletionTimestamp"):
        return Admission(stage, message="waiting for Kueue to queue the Workload")
    queue = (wl.get("spec") or {}).get("queueName")
    st = wl.get("status") or {}
    conds = {c["type"]: c for c in st.get("conditions") or []}

    def true(t: str) -> bool:
        return bool(conds.get(t, {}).get("status") == "True")

    adm = st.get("admission") or {}
    flavors = sorted(
        {f for ps in adm.get("podSetAssignments") or [] for f in (ps.get("flavors") or {}).values()}
    )
    if true("Evicted"):
        c = conds["Evicted"]
        reason = c.get("reason") or "Evicted"
        return Admission(stage, queue, evicted=reason, message=c.get("message", ""))
    if true("Admitted"):
        cq = adm.get("clusterQueue")
        return Admission(stage, queue, True, cluster_queue=cq, flavors=flavors)
    why = conds.get("QuotaReserved", {}).get("message") or "waiting for admission"
    return Admission(stage, queue, message=why)


def flavor_scheduling(flavors: list[Manifest]) -> tuple[dict[str, str], list[Manifest]]:
    """The node selector and tolerations the admitted ResourceFlavors add to the pods."""
    selector: dict[str, str] = {}
    tolerations: list[Manifest] = []
    for f in flavors:
        spec = f.get("spec") or {}
        selector.update(spec.get("nodeLabels") or {})
        tolerations += [t for t in spec.get("tolerations") or [] if t not in tolerations]
    return selector, tolerations


def inject(pod: Manifest, selector: dict[str, str], tolerations: list[Manifest]) -> Manifest:
    """`pod` with the flavor's scheduling added (the job's own entries stay)."""
    out = copy.deepcopy(pod)
    spec = out["spec"]
    if selector:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **selector}
    extra = [t for t in tolerations if t not in spec.get("tolerations", [])]
    if extra:
        spec["tolerations"] = [*spec.get("tolerations", []), *extra]
    return out
