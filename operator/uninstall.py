"""Release LLMTrainingJobs from the operator's finalizer, for when the operator is gone.

    llmtrain cleanup                        # every namespace: what the Helm chart's
    llmtrain cleanup -n team-a -n team-b    # uninstall hook runs (these namespaces only)

Every job carries the `llmtrain.io/operator` finalizer while the operator runs (kopf needs
it to stop a job's timer cleanly). Without the operator nothing removes it, so deleting a
job, or its namespace, would hang. This removes ours with a JSON merge patch of
`metadata.finalizers` and keeps any other finalizer; the job's resourceVersion rides along
as a precondition, so a concurrent change is re-read, never overwritten.

Run it only once the operator is stopped: a running operator puts its finalizer straight
back on the next event of the job (the chart's hook runs after `helm uninstall` deleted the
operator and its RBAC). The jobs themselves stay, with their pods; delete them as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmtrain.operator import api
from llmtrain.operator.handlers import FINALIZER

__all__ = ["FINALIZER", "Result", "finalizer_patch", "remove_finalizers", "without_finalizer"]

Body = dict[str, Any]
PAGE = 250  # jobs per LIST call
ATTEMPTS = 5  # re-reads of a job that changed between our read and our patch


def without_finalizer(finalizers: Sequence[str] | None) -> list[str] | None:
    """`finalizers` minus ours, in order; None when ours is not there (nothing to do)."""
    if not finalizers or FINALIZER not in finalizers:
        return None
    return [f for f in finalizers if f != FINALIZER]


def finalizer_patch(job: Body) -> Body | None:
    """The JSON merge patch that drops our finalizer from `job`, or None if it has none.

    A merge patch replaces a list whole, so the patch carries every other finalizer, and
    the resourceVersion it was computed from: the apiserver answers 409 if that moved.
    """
    meta = job.get("metadata") or {}
    rest = without_finalizer(meta.get("finalizers"))
    if rest is None:
        return None
    patch: Body = {"metadata": {"finalizers": rest}}
    if meta.get("resourceVersion"):
        patch["metadata"]["resourceVersion"] = meta["resourceVersion"]
    return patch


@dataclass
class Result:
    released: list[str] = field(default_factory=list)  # "namespace/name" of each job
    failed: list[str] = field(default_factory=list)  # "namespace/name: why"


def _jobs(custom: client.CustomObjectsApi, namespace: str | None) -> Iterator[Body]:
    """Every LLMTrainingJob, in pages; nothing when the CRD is not installed (404)."""
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE}
        if token:
            kwargs["_continue"] = token
        try:
            if namespace is None:
                found = custom.list_cluster_custom_object(
                    api.GROUP, api.VERSION, api.PLURAL, **kwargs
                )
            else:
                found = custom.list_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, api.PLURAL, **kwargs
                )
        except ApiException as e:
            if e.status == 404:
                return
            raise
        page = cast(Body, found)
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


def _release(custom: client.CustomObjectsApi, job: Body, result: Result) -> None:
    meta = job["metadata"]
    ns, name = meta["namespace"], meta["name"]
    for _ in range(ATTEMPTS):
        patch = finalizer_patch(job)
        if patch is None:
            return
        try:
            custom.patch_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL, name, patch
            )
        except ApiException as e:
            if e.status == 404:
                return  # gone meanwhile: nothing holds it any more
            if e.status != 409:
                result.failed.append(f"{ns}/{name}: {e.status} {e.reason}")
                return
            try:  # it changed since we read it: read it again and recompute
                job = cast(
                    Body,
                    custom.get_namespaced_custom_object(
                        api.GROUP, api.VERSION, ns, api.PLURAL, name
                    ),
                )
            except ApiException as e2:
                if e2.status != 404:
                    result.failed.append(f"{ns}/{name}: {e2.status} {e2.reason}")
                return
            continue
        result.released.append(f"{ns}/{name}")
        return
    result.failed.append(f"{ns}/{name}: still changing after {ATTEMPTS} attempts")


def remove_finalizers(custom: client.CustomObjectsApi, namespaces: Sequence[str] = ()) -> Result:
    """Remove our finalizer from every job in `namespaces` (all namespaces when empty).

    Raises ApiException when a namespace cannot be listed (e.g. 403): then nothing there
    was released, and the caller should say so.
    """
    result = Result()
    where: list[str | None] = [*dict.fromkeys(namespaces)] or [None]
    for ns in where:
        for job in _jobs(custom, ns):
            _release(custom, job, result)
    return result
