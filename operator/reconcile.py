"""One reconcile pass of one job: read, decide (state.py), write the status, apply.

    await reconcile(ctx, "ns", "job", job_pods, scrape=True)   # handlers.py: the timer, job events
    trigger(ctx, "ns", "job", job_pods)                         # a pod's event: queue a pass

Passes of a job run one at a time (`JobCache.lock`); triggers that arrive while a pass waits
fold into it. A pass reads the job (from the cache, else the apiserver), decides, writes the
status first (with its resourceVersion as a precondition, so two writers cannot both win)
and only then creates or deletes children. Every child has a deterministic name, so doing
that twice is harmless, and all counters live in the job's status, so a restarted operator
carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from llmtrain.operator import api, gang, kueue, layout, manifests, progress, state, status
from llmtrain.operator.kube import ApiException, Body, Kube
from llmtrain.operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)
Key = tuple[str, str]
RECREATE = 10.0  # seconds before creating an attempt's missing pods again
# Passes of different jobs that run at once. A pass holds its job's parsed model and built
# manifests while it waits on the apiserver (Kube allows 32 requests in flight): unbounded,
# a burst of 1,000 new jobs held 1,000 of them at the peak; queued here, a pass holds nothing.
PASSES = 64
# A Ray worker pod's grace once its head has exited (its sidecars get as long).
WORKER_GRACE_SECONDS = 2


@dataclass
class Options:
    """How the operator runs: the `llmtrain operator` options (cli.main)."""

    job_defaults: layout.JobDefaults = field(default_factory=layout.JobDefaults)
    policy: status.Policy = field(default_factory=status.Policy)
    resync_seconds: float = 10.0
    scrape_timeout: float = 2.0
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace


@dataclass
class JobCache:
    """Per job: the last body seen, and the lock that runs its passes one at a time
    (triggers that arrive meanwhile fold into one).

    `body` caches the job as last seen (a watch event, or the response to our own status
    write), so a pass needs no GET. Our write's echo is awaited: any other event seen
    before it may be older than what we wrote, so it drops the cache and the next pass
    reads the job fresh. Status writes carry the resourceVersion as a precondition, so
    a pass on a stale cache cannot write; it gets a 409 and re-reads.
    """

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False
    scrape: bool = False
    body: Body | None = None
    echo: str | None = None  # resourceVersion of our last write, until its event arrives
    # When we last created an attempt's objects: until the pod index shows them, passes
    # would only repeat the same creates (409s), so for a while they do not.
    ensured: dict[tuple[str, int], float] = field(default_factory=dict)

    def seen(self, body: Body) -> bool:
        """Record a watch event; False when it is just the echo of our own write."""
        rv = body["metadata"].get("resourceVersion")
        if self.echo is not None:
            if rv == self.echo:
                # The same job as our write's response; keep this copy, whose spec and status
                # kopf holds anyway (its timer's body), rather than a second one per job.
                self.echo, self.body = None, body
                return False
            self.body = None
            return True
        self.body = body
        return True

    def wrote(self, body: Body) -> None:
        self.body, self.echo = body, body["metadata"].get("resourceVersion")


@dataclass
class Context:
    """What every handler shares, passed through kopf's `memo`."""

    options: Options
    kube: Kube
    metrics: OperatorMetrics
    caches: dict[Key, JobCache] = field(default_factory=dict)
    pod_views: dict[str, progress.PodView | None] = field(default_factory=dict)  # by pod uid
    passes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PASSES))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # trigger()'s passes

    def cache(self, key: Key) -> JobCache:
        return self.caches.setdefault(key, JobCache())


def trigger(ctx: Context, namespace: str, name: str, job_pods: Mapping[Key, Any]) -> None:
    """Queue a pass of the job and return at once (events of its pods and Workloads): kopf's
    worker for the pod moves on to its next event instead of waiting for the job's pass, so
    in a burst events do not pile up in kopf's queues (each a whole decoded pod) while passes
    wait their turn. A failed pass is logged; the next event or resync retries it."""
    if ctx.cache((namespace, name)).queued:
        return  # a pass is already waiting; it reads the state after this event anyway
    task = asyncio.create_task(_logged(reconcile(ctx, namespace, name, job_pods, scrape=False)))
    ctx.tasks.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(ctx.tasks.discard)


async def _logged(coro: Any) -> None:
    try:
        await coro
    except Exception:
        log.exception("a reconcile pass failed; the next event or resync retries it")


async def reconcile(
    ctx: Context, namespace: str, name: str, job_pods: Mapping[Key, Any], scrape: bool
) -> None:
    key = (namespace, name)
    cache = ctx.cache(key)
    cache.scrape |= scrape
    if cache.queued:
        return  # a pass is already waiting; it reads the state after this event anyway
    cache.queued = True
    try:
        await cache.lock.acquire()
        try:
            await ctx.passes.acquire()  # after the job's lock: a queued pass holds no slot
        except BaseException:
            cache.lock.release()
            raise
    finally:  # also when cancelled while waiting: later triggers must not be swallowed
        cache.queued = False
    try:
        scrape, cache.scrape = cache.scrape, False
        await _reconcile(ctx, cache, namespace, name, list(job_pods.get(key, ())), scrape)
    except Exception:
        ctx.metrics.reconciles.labels(result="error").inc()
        raise
    finally:
        ctx.passes.release()
        cache.lock.release()
    ctx.metrics.reconciles.labels(result="ok").inc()


async def _reconcile(
    ctx: Context,
    cache: JobCache,
    namespace: str,
    name: str,
    pods: list[progress.PodView],
    scrape: bool,
) -> None:
    body = cache.body
    if body is None:
        body = cache.body = await ctx.kube.get_job(namespace, name)
        cache.echo = None
    if body is None:  # deleted: its DELETED event may have dropped the cache already
        ctx.caches.pop((namespace, name), None)
        return
    if body["metadata"].get("deletionTimestamp"):
        return
    old = _status(body)
    defaults, policy = ctx.options.job_defaults, ctx.options.policy
    try:
        job = api.parse_job({k: v for k, v in body.items() if k != "status"})
        problems = layout.cluster_problems(job, defaults) if old.phase == api.Phase.Pending else []
    except api.SpecError as e:
        problems = e.problems
    if problems:
        new = state.invalid(old, [str(p) for p in problems], status.utcnow())
        if new != old and await _write(ctx, cache, body, new):
            msg = "; ".join(map(str, problems))
            log.info("job %s/%s failed validation: %s", namespace, name, msg)
            kopf.warn(_kbody(body), reason=status.REASON_VALIDATION, message=msg)
        ctx.metrics.job_phase(namespace, name, new.phase)
        return
    job.status = old
    uid = body["metadata"].get("uid")
    pods = [p for p in pods if p.owner_uid == uid]  # a namesake's orphans are not ours
    sample = await _scrape(ctx, job, pods) if scrape else None
    queue = await _workloads(ctx, job, old, pods) if kueue.queue_name(job) else None
    d = state.decide(job, pods, status.utcnow(), sample, policy, queue)
    if d.restarts or (d.status.phase == api.Phase.Failed and old.phase != api.Phase.Failed):
        # Tearing a gang down on the index's word alone is too much: a pod missing from it
        # may simply not be listed yet (a replica that just took over). Read the pods.
        found = await ctx.kube.list_pods(namespace, f"{layout.LABEL_JOB}={name}")
        pods = [v for v in map(progress.PodView.from_pod, found) if v and v.owner_uid == uid]
        d = state.decide(job, pods, status.utcnow(), sample, policy, queue)
    if d.status != old:
        if not await _write(ctx, cache, body, d.status):
            return  # someone wrote in between; the next pass reads the job afresh
        for ev in d.events:
            log.info("job %s/%s: %s: %s", namespace, name, ev.reason, ev.message)
            kopf.event(_kbody(body), type=ev.type, reason=ev.reason, message=ev.message)
        _observe(ctx.metrics, namespace, name, d)
    ctx.metrics.job_phase(namespace, name, d.status.phase)
    decided = [(s.name, g.metric, g.passed) for s in d.status.stages for g in s.gates]
    ctx.metrics.gates(namespace, name, decided)
    known = cache.body  # the job as it is with d.status
    refused = await _apply(ctx, cache, job, d, pods)
    moved = (d.status.current_stage, d.status.phase in status.TERMINAL) != (
        old.current_stage,
        old.phase in status.TERMINAL,
    )
    if queue is not None and moved:  # release the stage's quota now; queue the next one
        await _workloads(ctx, job, d.status, pods)
    if refused and d.ensure is not None and known is not None and cache.body is known:
        await _report_refused(ctx, cache, known, job, d, refused)


async def _report_refused(
    ctx: Context,
    cache: JobCache,
    body: Body,
    job: api.LLMTrainingJob,
    d: status.Decision,
    refused: list[str],
) -> None:
    """Without this the job would sit in Pending with nothing said: a CreateFailed condition
    and a Warning Event, once per distinct reason (a retry refused alike changes nothing)."""
    assert d.ensure is not None
    msg = refusal_message(job, *d.ensure, refused, ctx.options.job_defaults)
    new = state.create_refused(d.status, msg, status.utcnow())
    if new != d.status and await _write(ctx, cache, body, new):
        kopf.event(
            _kbody(body), type=status.WARNING, reason=status.REASON_FAILED_CREATE, message=msg
        )


def _kbody(body: Body) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, body))


def _status(body: Body) -> api.LLMTrainingJobStatus:
    try:
        return api.LLMTrainingJobStatus.model_validate(body.get("status") or {})
    except ValueError:
        log.warning("unreadable status of %s; starting from an empty one", body["metadata"])
        return api.LLMTrainingJobStatus()


def status_patch(st: api.LLMTrainingJobStatus) -> Body:
    """The whole status as a merge patch: unset top-level fields become null (removed)."""
    full = st.model_dump(by_alias=True, mode="json")
    compact = st.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {k: compact.get(k) for k in full}


async def _write(ctx: Context, cache: JobCache, body: Body, st: api.LLMTrainingJobStatus) -> bool:
    meta = body["metadata"]
    written = await ctx.kube.patch_job_status(
        meta["namespace"], meta["name"], status_patch(st), meta.get("resourceVersion")
    )
    if written is None:
        cache.body = None
        return False
    cache.wrote(written)
    return True


def _observe(m: OperatorMetrics, namespace: str, name: str, d: status.Decision) -> None:
    for stage_type, seconds in d.stage_durations:
        m.stage_duration.labels(type=stage_type).observe(seconds)
    if d.time_to_running is not None:
        m.time_to_running.observe(d.time_to_running)
    if d.queued_seconds is not None:
        m.queued_seconds.labels(namespace=namespace, job=name).inc(d.queued_seconds)
    for reason in d.restarts:
        m.stage_restarts.labels(namespace=namespace, job=name, reason=reason).inc()


async def _scrape(
    ctx: Context, job: api.LLMTrainingJob, pods: list[progress.PodView]
) -> status.Scrape | None:
    cur = status.current_stage(job.status)
    if cur is None or cur.phase != api.Phase.Running:
        return None
    head = next(
        (p for p in pods if (p.stage, p.attempt, p.rank) == (cur.name, cur.attempt, 0)), None
    )
    if head is None or not head.ip or head.phase != "Running":
        return None
    port = layout.metrics_port(job, ctx.options.job_defaults)
    values, error = await progress.scrape(head.ip, port, ctx.options.scrape_timeout)
    return status.Scrape(cur.name, cur.attempt, values, error)


async def _apply(
    ctx: Context,
    cache: JobCache,
    job: api.LLMTrainingJob,
    d: status.Decision,
    pods: list[progress.PodView],
) -> list[str]:
    """Delete and create what `d` says; returns the apiserver's reasons for each object
    it refused to create (the job then waits, and retries after RECREATE)."""
    ns, kube = layout.namespace_of(job), ctx.kube
    refused: list[str] = []
    # A worker pod goes only once its head has (state._unwanted): nothing is left for it
    # to do, and Ray's SIGTERM drain would wait 30 s on the gone head before the next gang
    # (or the retry) could have its resources.
    ranks = {p.name: p.rank for p in pods}
    deletions = [
        kube.delete("Pod", ns, n, WORKER_GRACE_SECONDS if ranks.get(n, 0) else None)
        for n in d.delete_pods
    ]
    for stage, attempt in d.delete_attempts:
        name = layout.attempt_name(job.metadata.name, stage, attempt)
        deletions += [kube.delete("Service", ns, name), kube.delete("ConfigMap", ns, name)]
        if ctx.options.job_defaults.network_policy:
            deletions.append(kube.delete("NetworkPolicy", ns, name))
        if gang.enabled(job):
            deletions.append(kube.delete("PodGroup", ns, name))
    await asyncio.gather(*deletions)
    if d.ensure is not None and time.monotonic() - cache.ensured.get(d.ensure, -1e9) > RECREATE:
        objs = manifests.build_stage_objects(job, *d.ensure, ctx.options.job_defaults)
        if d.queue is not None and d.queue.admitted:
            objs = await _flavored(ctx, d.queue, objs)
        have = {p.name for p in pods}
        missing = [o for o in objs if o["kind"] == "Pod" and o["metadata"]["name"] not in have]
        if missing:
            # All at once: a pod created before its ConfigMap waits for it to mount.
            others = [o for o in objs if o["kind"] != "Pod"]
            results = await asyncio.gather(
                *(kube.create(o) for o in [*others, *missing]), return_exceptions=True
            )
            for r in results:
                why = _refusal(r) if isinstance(r, ApiException) else ""
                if why:
                    refused.append(why)
                elif isinstance(r, BaseException):
                    raise r
            pod_results = results[len(others) :]
            ctx.metrics.pods_created.inc(sum(r is True for r in pod_results))
            if any(r is True for r in pod_results):
                log.info(
                    "job %s/%s: created %d pod(s) of stage %s attempt %d",
                    ns,
                    job.metadata.name,
                    sum(r is True for r in pod_results),
                    *d.ensure,
                )
            exists = [o for o, r in zip(missing, pod_results, strict=True) if r is False]
            refused += await _foreign(kube, job, exists)
            cache.ensured[d.ensure] = time.monotonic()
    if d.ensure_init is not None:
        refused += await _ensure_init(ctx, cache, job, d.ensure_init, pods)
    if d.delete_job:
        await kube.delete_job(ns, job.metadata.name)
    return refused


async def _ensure_init(
    ctx: Context,
    cache: JobCache,
    job: api.LLMTrainingJob,
    attempt: int,
    pods: list[progress.PodView],
) -> list[str]:
    """Create the initializer's ConfigMap and pod (manifests.build_initializer_objects)."""
    key = (layout.INIT_STAGE, attempt)
    name = layout.init_name(job.metadata.name, attempt)
    if (
        any(p.name == name for p in pods)
        or time.monotonic() - cache.ensured.get(key, -1e9) < RECREATE
    ):
        return []
    objs = manifests.build_initializer_objects(job, attempt, ctx.options.job_defaults)
    results = await asyncio.gather(*(ctx.kube.create(o) for o in objs), return_exceptions=True)
    refused = []
    for r in results:
        why = _refusal(r) if isinstance(r, ApiException) else ""
        if why:
            refused.append(why)
            log.warning("job %s: initializer refused: %s", job.metadata.name, why)
        elif isinstance(r, BaseException):
            raise r
    if results[-1] is True:
        ctx.metrics.pods_created.inc()
        log.info(
            "job %s/%s: created initializer %s", layout.namespace_of(job), job.metadata.name, name
        )
    cache.ensured[key] = time.monotonic()
    return refused


async def _workloads(
    ctx: Context,
    job: api.LLMTrainingJob,
    st: api.LLMTrainingJobStatus,
    pods: list[progress.PodView],
) -> kueue.Admission | None:
    """Kueue's word on the current stage, for a job that names a queue: its Workload is
    created if missing; the Workloads of other stages (or of a finished or suspended job)
    are deleted, releasing their quota; an evicted one goes once its gang is gone, and a
    fresh one queues again. None when no Workload is wanted or Kueue's API is not served
    (the decision ignores Kueue)."""
    ns, name = layout.namespace_of(job), job.metadata.name
    cur = status.current_stage(st)
    stage = cur.name if cur else job.spec.stages[0].name
    wanted = st.phase not in status.TERMINAL and not job.spec.suspend
    uid = (job.metadata.model_extra or {}).get("uid")
    try:
        found = await ctx.kube.list_objects("Workload", ns, f"{layout.LABEL_JOB}={name}")
    except ApiException as e:
        if e.status != 404:
            raise
        # Kueue is not installed: the queue label only travels to the pods, as without a queue.
        return None
    gang = cur is not None and any((p.stage, p.attempt) == (cur.name, cur.attempt) for p in pods)
    wl = None
    for w in found:
        if uid not in [o.get("uid") for o in w["metadata"].get("ownerReferences") or []]:
            continue  # a deleted namesake's: the garbage collector takes it
        mine = wanted and w["metadata"]["name"] == kueue.workload_name(name, stage)
        requeue = mine and kueue.admission(stage, w).evicted and st.phase == api.Phase.Suspended
        if mine and not (requeue and not gang):
            wl = w
        elif not w["metadata"].get("deletionTimestamp"):
            await ctx.kube.delete("Workload", ns, w["metadata"]["name"])
    if not wanted:
        return None
    if wl is None:
        pc = job.spec.resources.priority_class_name
        prio = (
            await ctx.kube.get("apis/scheduling.k8s.io/v1", "priorityclasses", pc) if pc else None
        )
        priority = int(prio["value"]) if prio and "value" in prio else None
        wl = kueue.build_workload(job, stage, priority, ctx.options.job_defaults)
        await ctx.kube.create(wl)  # a fresh Workload waits: it has no status yet
    return kueue.admission(stage, wl)


async def _flavored(
    ctx: Context, q: kueue.Admission, objs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The pods with the admitted ResourceFlavors' node labels and tolerations."""
    prefix = f"apis/{kueue.GROUP}/{kueue.VERSION}"
    flavors = [await ctx.kube.get(prefix, "resourceflavors", f) for f in q.flavors]
    selector, tolerations = kueue.flavor_scheduling([f for f in flavors if f])
    return [kueue.inject(o, selector, tolerations) if o["kind"] == "Pod" else o for o in objs]


async def _foreign(kube: Kube, job: api.LLMTrainingJob, pods: list[Body]) -> list[str]:
    """Pods we tried to create that exist but are not this job's (a deleted namesake's, or
    no owner at all): never adopted, so the attempt cannot start until they are gone."""
    uid = (job.metadata.model_extra or {}).get("uid")
    out = []
    for obj in pods:
        meta = obj["metadata"]
        found = await kube.get_pod(meta["namespace"], meta["name"])
        owners = [
            o.get("uid")
            for o in (found or {}).get("metadata", {}).get("ownerReferences") or []
            if o.get("controller")
        ]
        if found is not None and uid not in owners:
            out.append(
                f"pod {meta['name']} exists and is not owned by this job "
                f"(owner uid {owners[0] if owners else 'none'}); delete it"
            )
    return out


def _refusal(e: ApiException) -> str:
    """The apiserver's message when it refused a request for good (a 4xx other than
    throttling), e.g. `pods "x" is forbidden: error looking up service account ...`;
    empty for errors worth raising (5xx, 429, no response)."""
    if e.status is None or not 400 <= e.status < 500 or e.status == 429:
        return ""
    try:
        message = json.loads(e.body or "")["message"]
    except (TypeError, ValueError, KeyError):
        message = None
    return str(message or f"{e.status} {e.reason}")


def refusal_message(
    job: api.LLMTrainingJob,
    stage: str,
    attempt: int,
    refused: list[str],
    defaults: layout.JobDefaults,
) -> str:
    """One line for the CreateFailed condition and its Event."""
    msg = f"stage {stage} attempt {attempt}: {refused[0]}"
    if len(refused) > 1:
        msg += f" (and {len(refused) - 1} more)"
    sa = defaults.service_account
    if sa and f'serviceaccount "{sa}" not found' in msg:
        ns = layout.namespace_of(job)
        msg += (
            f"; worker pods run as ServiceAccount {sa!r}: create it in namespace {ns!r}"
            " (or run job pods as `default`: leave the chart's serviceAccount.worker.name empty)"
        )
    return msg
