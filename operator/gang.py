"""All-or-nothing without Kueue: a PodGroup per stage attempt for a gang scheduler. Pure.

    objs = build_stage_objects(job, "sft", 1)   # manifests.py adds pod_group() and pod_fields()
    pod_group(job, "sft", 1)                    # None unless spec.scheduling.gang is podgroup

With `spec.scheduling.gang: podgroup` every attempt gets a scheduler-plugins coscheduling
PodGroup (`scheduling.x-k8s.io/v1alpha1`) named like the attempt, with minMember = workers,
and its pods carry the `scheduling.x-k8s.io/pod-group` label and the gang scheduler's
`schedulerName` (`resources.schedulerName`, else `scheduler-plugins-scheduler`, the name
the scheduler-plugins chart installs it under). The scheduler binds no pod of the gang
until all of them fit, so a half-placed gang never holds GPUs. The PodGroup is owned by the
job and deleted with the attempt's ConfigMap and Service.
"""

from __future__ import annotations

from typing import Any

from llmtrain.operator import api, layout

GROUP, VERSION, PLURAL = "scheduling.x-k8s.io", "v1alpha1", "podgroups"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
DEFAULT_SCHEDULER = "scheduler-plugins-scheduler"

Manifest = dict[str, Any]


def enabled(job: api.LLMTrainingJob) -> bool:
    return job.spec.scheduling.gang == api.Gang.podgroup


def pod_group(job: api.LLMTrainingJob, stage: str, attempt: int) -> Manifest | None:
    """The attempt's PodGroup: all `workers` pods or none."""
    if not enabled(job):
        return None
    name = layout.attempt_name(job.metadata.name, stage, attempt)
    meta: Manifest = {
        "name": name,
        "namespace": layout.namespace_of(job),
        "labels": layout.labels(job.metadata.name, stage, attempt),
    }
    if (job.metadata.model_extra or {}).get("uid"):
        meta["ownerReferences"] = [layout.owner_reference(job)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PodGroup",
        "metadata": meta,
        "spec": {"minMember": job.spec.resources.workers},
    }


def pod_fields(job: api.LLMTrainingJob, stage: str, attempt: int, pod: Manifest) -> Manifest:
    """`pod` (changed in place and returned) joined to its attempt's PodGroup."""
    if enabled(job):
        name = layout.attempt_name(job.metadata.name, stage, attempt)
        pod["metadata"]["labels"][POD_GROUP_LABEL] = name
        pod["spec"]["schedulerName"] = job.spec.resources.scheduler_name or DEFAULT_SCHEDULER
    return pod
