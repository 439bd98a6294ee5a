"""What the operator observes of a job's pods and its driver: pods as the state machine sees
them, and the driver's Prometheus endpoint (docs/contracts.md §4) folded into progress.

    view = PodView.from_pod(pod_manifest)                    # None without our labels
    values, error = await scrape("10.1.2.3", 9400, timeout=2.0)
    # ({"llmtrain_train_step": 120.0, ...}, None), or (None, "GET ...: connection refused")
    progress, metrics, checkpoint_step = fold(stage.progress, values)

Only `llmtrain_*` samples are kept; a counter's `_total` sample keeps its full name. A
driver that is not up yet, or any network error, yields no values and the reason: the state
machine, not this module, decides what a silent driver means (ProgressUnknown, not a stall).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from llmtrain.operator.layout import CONTAINER, LABEL_ATTEMPT, LABEL_RANK, LABEL_STAGE
from llmtrain.trainer.contract import CHECKPOINT_STEP_METRIC, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodView:
    """What the state machine needs to know about one pod of the job."""

    name: str
    stage: str
    attempt: int
    rank: int
    phase: str = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    disruption: str | None = None
    deleting: bool = False
    ip: str | None = None
    owner_uid: str | None = None  # the controlling ownerReference's uid
    finished_at: str | None = None  # when the trainer container terminated
    message: str | None = None  # its termination message: the stage's result metrics
    # Why a Pending pod does not start: (reason, message) from the scheduler or the kubelet.
    waiting: tuple[str, str] | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodView | None:
        """From a Pod manifest; None when it does not carry our labels."""
        meta = pod.get("metadata") or {}
        lbl = meta.get("labels") or {}
        try:
            attempt, rank = int(lbl[LABEL_ATTEMPT]), int(lbl[LABEL_RANK])
            stage = lbl[LABEL_STAGE]
        except (KeyError, ValueError):
            return None
        status = pod.get("status") or {}
        exit_code, reason, finished_at = None, status.get("reason"), None
        message = None
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == CONTAINER and term:
                exit_code = term.get("exitCode")
                reason = reason or term.get("reason")
                finished_at = term.get("finishedAt")
                message = term.get("message")
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        disruption = conditions.get("DisruptionTarget") or {}
        owner = next(
            (o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("controller")),
            None,
        )
        return cls(
            name=meta.get("name", ""),
            stage=stage,
            attempt=attempt,
            rank=rank,
            phase=status.get("phase") or "Pending",
            exit_code=exit_code,
            reason=reason,
            disruption=disruption.get("reason") if disruption.get("status") == "True" else None,
            deleting=bool(meta.get("deletionTimestamp")),
            ip=status.get("podIP"),
            owner_uid=owner,
            finished_at=finished_at,
            message=message,
            waiting=_waiting(status, conditions.get("PodScheduled") or {}),
        )


# Waiting reasons of a container that is on its way (not worth a condition).
_STARTING = {"ContainerCreating", "PodInitializing"}


def _waiting(status: Mapping[str, Any], scheduled: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) while a pod cannot start: the scheduler's verdict, or a container
    the kubelet cannot start (ErrImagePull, CreateContainerConfigError, ...)."""
    if status.get("phase", "Pending") != "Pending":
        return None
    if scheduled.get("status") == "False" and scheduled.get("reason"):
        return str(scheduled["reason"]), str(scheduled.get("message") or "")
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _STARTING:
            return str(waiting["reason"]), f"{cs.get('name')}: {waiting.get('message') or ''}"
    return None


def result_metrics(message: str | None) -> dict[str, float]:
    """The metrics a driver left in its termination message (`{"metrics": {...}}`, written
    by the trainer's entry point on success); {} when there are none or they are unreadable."""
    try:
        metrics = json.loads(message or "{}").get("metrics") or {}
    except (ValueError, AttributeError):
        return {}
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _num(x: float) -> float:
    """Six significant digits: enough for a status, and it keeps writes from churning."""
    return float(f"{x:.6g}")


def fold(progress: Progress, values: Mapping[str, float]) -> tuple[Progress, dict[str, float], int]:
    """(progress, metrics, newest checkpoint step) after a scrape: what the driver said, over
    what the stage showed before (a metric the driver has not logged yet keeps its value)."""
    v = {k: _num(x) for k, x in values.items() if math.isfinite(x)}
    metrics = {k.removeprefix("llmtrain_"): x for k, x in sorted(v.items())}
    step = int(v.get(CHECKPOINT_STEP_METRIC, 0))
    return Progress.from_metrics(v, previous=progress), metrics, step


def parse_metrics(text: str) -> dict[str, float]:
    """`llmtrain_*` sample values by name; the first sample wins when labels differ."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("llmtrain_") and not sample.name.endswith("_created"):
                out.setdefault(sample.name, float(sample.value))
    return out


async def scrape(
    host: str, port: int, timeout: float = 2.0
) -> tuple[dict[str, float] | None, str | None]:
    import aiohttp  # here: the state machine imports this module for PodView and fold

    url = f"http://{host}:{port}/metrics"
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session,
            session.get(url) as rsp,
        ):
            if rsp.status != 200:
                return None, f"GET {url}: HTTP {rsp.status}"
            text = await rsp.text()
    except TimeoutError:
        return None, f"GET {url}: no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as e:
        log.debug("scrape %s failed: %s", url, e)
        return None, f"GET {url}: {e}"
    try:
        return parse_metrics(text), None
    except ValueError as e:
        log.warning("scrape %s: unparsable metrics: %s", url, e)
        return None, f"GET {url}: unparsable metrics: {e}"
