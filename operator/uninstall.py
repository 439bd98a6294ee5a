"""Release LLMTrainingJobs from the operator's finalizer, for when the operator is gone.

    llmtrain cleanup                        # every namespace: what the Helm chart's
    llmtrain cleanup -n team-a -n team-b    # uninstall hook runs (these namespaces only)
    result = cleanup(["team-a"])            # the same from Python

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

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
from kopf._cogs.clients import auth

from llmtrain.operator.handlers import FINALIZER
from llmtrain.operator.kube import ApiException, Kube, login

__all__ = [
    "FINALIZER",
    "LoginFailed",
    "Result",
    "cleanup",
    "finalizer_patch",
    "remove_finalizers",
    "without_finalizer",
]

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


async def _jobs(kube: Kube, namespace: str | None) -> AsyncIterator[Body]:
    """Every LLMTrainingJob, in pages; nothing when the CRD is not installed (404)."""
    token: str | None = None
    while True:
        try:
            page = await kube.list_jobs(namespace, PAGE, token)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        for job in page.get("items") or []:
            yield job
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


async def _release(kube: Kube, job: Body, result: Result) -> None:
    meta = job["metadata"]
    ns, name = meta["namespace"], meta["name"]
    for _ in range(ATTEMPTS):
        patch = finalizer_patch(job)
        if patch is None:
            return
        try:
            await kube.patch_job(ns, name, patch)
        except ApiException as e:
            if e.status == 404:
                return  # gone meanwhile: nothing holds it any more
            if e.status != 409:
                result.failed.append(f"{ns}/{name}: {e.status} {e.reason}")
                return
            try:  # it changed since we read it: read it again and recompute
                fresh = await kube.get_job(ns, name)
            except ApiException as e2:
                result.failed.append(f"{ns}/{name}: {e2.status} {e2.reason}")
                return
            if fresh is None:
                return
            job = fresh
            continue
        result.released.append(f"{ns}/{name}")
        return
    result.failed.append(f"{ns}/{name}: still changing after {ATTEMPTS} attempts")


async def remove_finalizers(kube: Kube, namespaces: Sequence[str] = ()) -> Result:
    """Remove our finalizer from every job in `namespaces` (all namespaces when empty).

    Raises ApiException when a namespace cannot be listed (e.g. 403): then nothing there
    was released, and the caller should say so.
    """
    result = Result()
    where: list[str | None] = [*dict.fromkeys(namespaces)] or [None]
    for ns in where:
        async for job in _jobs(kube, ns):
            await _release(kube, job, result)
    return result


class LoginFailed(Exception):
    pass


def cleanup(namespaces: Sequence[str] = ()) -> Result:
    """remove_finalizers over a session of its own, logged in as the operator does (kube.login:
    the ServiceAccount in a pod, as the chart's hook runs, else the kubeconfig)."""
    return asyncio.run(_cleanup(namespaces))


async def _cleanup(namespaces: Sequence[str]) -> Result:
    settings = kopf.OperatorSettings()
    try:
        info = login(settings=settings, logger=logging.getLogger(__name__))
    except kopf.LoginError as e:
        raise LoginFailed(f"no credentials: {e}") from None
    if info is None:
        raise LoginFailed("no credentials: neither in a pod nor a kubeconfig")
    context = auth.APIContext(info)
    try:
        return await remove_finalizers(Kube(settings, context), namespaces)
    finally:
        await context.session.close()
