"""Run the operator: kopf's settings, and `run()`, which `llmtrain operator` calls.

    run(Options(job_defaults=JobDefaults(image=...)), peering="llmtrain", liveness=...)

With peering, replicas elect one active operator; the others pause (PauseWatch drops what
they exported while active).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, cast

import kopf

from llmtrain.operator import handlers, layout
from llmtrain.operator.kube import Kube
from llmtrain.operator.metrics import OperatorMetrics
from llmtrain.operator.reconcile import Context, Options

log = logging.getLogger(__name__)


def settings(
    *, peering: str | None, clusterwide: bool, priority: int | None, lifetime: int
) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Post only our own Events (kopf.event), not kopf's per-handler chatter.
    s.posting.level = logging.WARNING
    s.persistence.finalizer = handlers.FINALIZER
    s.persistence.diffbase_storage = NoDiffBase()
    # Watch only our pods: the apiserver filters, so other workloads cost us nothing.
    s.watching.label_selectors["v1", "pods"] = layout.LABEL_JOB
    s.peering.standalone = peering is None
    s.peering.name = peering or "llmtrain"
    s.peering.clusterwide = clusterwide
    # Replicas of equal priority would all pause: give each a random one; the highest acts.
    s.peering.priority = priority if priority is not None else random.randint(1, 2**31)
    s.peering.lifetime = lifetime
    return s


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: our handlers are all level-based (on.event, a timer, an index), none
    of kopf's change-detecting ones (on.create/update/field) that read it. kopf still
    builds one for every event it sees, pods included: a deep copy of the whole body."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return cast(kopf.BodyEssence, {})

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


class PauseWatch(logging.Handler):
    """Calls `on_pause` when kopf's peering pauses this replica for a peer of higher priority.

    kopf has no hook for it, only these log lines (kopf/_core/engines/peering.py); a standby
    replica must stop exporting per-job series, or alerts fire on what it saw while active.
    tests/cluster/operator_tests/test_operator_ha.py fails if kopf rewords them.
    """

    LOGGER = "kopf._core.engines.peering"

    def __init__(self, on_pause: Any) -> None:
        super().__init__(logging.INFO)
        self.on_pause = on_pause

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Pausing "):
            self.on_pause()


def run(
    options: Options,
    *,
    peering: str | None = "llmtrain",
    priority: int | None = None,
    peering_lifetime: int = 15,
    liveness: str | None = None,
    metrics_bind: tuple[str, int] | None = None,
) -> None:
    """Run the operator until SIGINT/SIGTERM; watches every namespace when none are given."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, options)
    metrics = OperatorMetrics()
    if metrics_bind is not None:
        metrics.serve(*metrics_bind)

    def paused() -> None:
        log.info("standby: another replica is active; forgetting per-job state and metrics")
        metrics.forget_jobs()
        ctx.caches.clear()  # cached job bodies would be stale when this replica resumes
        for task in list(ctx.tasks):  # queued passes (reconcile.trigger) are ours to stop
            task.cancel()

    peering_log = logging.getLogger(PauseWatch.LOGGER)
    peering_log.addHandler(PauseWatch(paused))
    if peering_log.getEffectiveLevel() > logging.INFO:
        peering_log.setLevel(logging.INFO)
    clusterwide = not options.namespaces
    s = settings(
        peering=peering, clusterwide=clusterwide, priority=priority, lifetime=peering_lifetime
    )
    ctx = Context(options=options, kube=Kube(s), metrics=metrics)
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=s,
            clusterwide=clusterwide,
            namespaces=options.namespaces,
            standalone=peering is None,
            peering_name=peering,
            priority=s.peering.priority,
            liveness_endpoint=liveness,
            memo=kopf.Memo(ctx=ctx),
        )
    )
