"""The kopf callbacks and their registration; each is a few lines that hand off to a
reconcile pass (reconcile.py): the job's events and the timer run one; events of its pods and
Workloads queue one (`trigger`, not awaited, so kopf's per-pod queues drain at once).

    register(registry, options)          # main.run() does this

Three triggers feed one reconcile pass per job:

* events of the job itself (creation, spec edits such as `suspend`);
* events of the job's pods, which kopf also keeps in an in-memory index by job, so a
  pass reads its pods without a LIST call (level-based: the pass looks at what exists,
  not at what the event said);
* a timer every `resync_seconds`, which also scrapes the driver's /metrics for progress
  and lets the stall watchdog, the deadline and the TTL fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from llmtrain.operator import api, kube, layout, progress
from llmtrain.operator.kube import ApiException
from llmtrain.operator.reconcile import Context, Key, Options, reconcile, trigger

FINALIZER = "llmtrain.io/operator"  # kopf timers need one, to stop cleanly on deletion
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"


async def index_pods(
    namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, progress.PodView]:
    """job_pods[(namespace, job)] -> the job's pods, as the state machine sees them.
    A coroutine only because kopf runs plain functions on a thread pool, per event."""
    view = progress.PodView.from_pod(body)
    return {(namespace, labels[layout.LABEL_JOB]): view} if view else {}


async def on_job_event(
    event: Mapping[str, Any],
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    job_pods: kopf.Index[Key, progress.PodView],
    **_: Any,
) -> None:
    ctx: Context = memo.ctx
    if event.get("type") == "DELETED":
        ctx.metrics.job_phase(namespace, name, None)
        ctx.caches.pop((namespace, name), None)
        return
    if _awaits_finalizer(body):
        # kopf adds its finalizer once this returns, with a resourceVersion test, as our
        # status writes carry one: racing, each voided the other's write (three attempts per
        # job in a burst). Its event brings the first pass instead.
        return
    if ctx.cache((namespace, name)).seen(kube.slim(body)):
        await reconcile(ctx, namespace, name, job_pods, scrape=False)


async def on_pod_event(
    event: Mapping[str, Any],
    namespace: str,
    uid: str,
    labels: Mapping[str, str],
    body: kopf.Body,
    memo: kopf.Memo,
    job_pods: kopf.Index[Key, progress.PodView],
    **_: Any,
) -> None:
    ctx: Context = memo.ctx
    if event.get("type") == "DELETED":
        ctx.pod_views.pop(uid, None)
    else:
        view = progress.PodView.from_pod(body)
        if ctx.pod_views.get(uid) == view:
            return  # e.g. the scheduler binding it: nothing the state machine looks at
        ctx.pod_views[uid] = view
    trigger(ctx, namespace, labels[layout.LABEL_JOB], job_pods)


async def on_workload_event(
    namespace: str,
    labels: Mapping[str, str],
    memo: kopf.Memo,
    job_pods: kopf.Index[Key, progress.PodView],
    **_: Any,
) -> None:
    """Kueue admitted or evicted a job's Workload (kueue.py): act on it now, not at the
    next resync."""
    trigger(memo.ctx, namespace, labels[layout.LABEL_JOB], job_pods)


async def on_timer(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    job_pods: kopf.Index[Key, progress.PodView],
    **_: Any,
) -> None:
    await reconcile(memo.ctx, namespace, name, job_pods, scrape=True)


def _awaits_finalizer(body: kopf.Body) -> bool:
    """kopf is about to add its finalizer (the timer needs one): a new job, as a rule."""
    meta = body.metadata
    return (
        FINALIZER not in (meta.get("finalizers") or ())
        and not meta.get("deletionTimestamp")
        and _needs_timer(body.spec, body.status)
    )


def _needs_timer(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Finished jobs need the timer only to expire their TTL."""
    finished = status.get("phase") in (api.Phase.Succeeded, api.Phase.Failed)
    return not finished or (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished") is not None


async def ensure_peering(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Create our peering object(s), so that replicas find each other (needs kopf's CRDs).

    Without the CRDs kopf runs standalone; without RBAC to create them, the chart's copy
    of the object must exist.
    """
    if settings.peering.standalone:
        return
    ctx: Context = memo.ctx
    where = [None] if settings.peering.clusterwide else ctx.options.namespaces
    for ns in where:
        kind = "ClusterKopfPeering" if ns is None else "KopfPeering"
        body = {
            "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
            "kind": kind,
            "metadata": {"name": settings.peering.name},
        }
        try:
            plural = kind.lower() + "s"
            await ctx.kube.create_before_login(PEERING_GROUP, PEERING_VERSION, plural, body, ns)
        except ApiException as e:
            if e.status not in (403, 404, 409):  # no RBAC, no CRD, exists: all fine here
                raise


# ---- wiring ------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    """Attach the handlers to `registry`; the timer interval comes from `options`."""
    labelled = {layout.LABEL_JOB: kopf.PRESENT}
    job = (api.GROUP, api.VERSION, api.PLURAL)
    # kopf passes indices (job_pods) by name; its callback protocols do not list them.
    fn: Any = cast(Any, lambda f: f)
    # In a pod its ServiceAccount, else the kubeconfig (kube.login).
    kopf.on.login(registry=registry)(fn(kube.login))
    kopf.on.startup(registry=registry)(fn(ensure_peering))
    kopf.index("pods", labels=labelled, registry=registry, id="job_pods")(fn(index_pods))
    kopf.on.event("pods", labels=labelled, registry=registry)(fn(on_pod_event))
    kopf.on.event(*job, registry=registry)(fn(on_job_event))
    # Kueue's Workloads of our jobs (inactive where Kueue's CRDs are not installed).
    kopf.on.event("kueue.x-k8s.io", "workloads", labels=labelled, registry=registry)(
        fn(on_workload_event)
    )
    timer = kopf.timer(*job, interval=options.resync_seconds, when=_needs_timer, registry=registry)
    timer(fn(on_timer))
