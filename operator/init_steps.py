"""The initializer's steps of the state machine (state.py): one pod fetches the inputs and
runs the preflight before the first gang of a job; it is retried as a stage attempt is. Pure.

    init_steps.start(st, attempt, now, d)    # d.ensure_init = attempt: its pod must exist
    if init_steps.initializing(st) and init_steps.step(job, st, cur, pods, now, policy, d):
        ...                                  # the preflight passed: state.py starts the gang
    doomed = init_steps.unwanted(st, init_pods)   # initializer pods to delete
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

from llmtrain.operator import api, layout
from llmtrain.operator.api import LLMTrainingJobStatus, Phase, StageStatus
from llmtrain.operator.progress import PodView
from llmtrain.operator.status import (
    NORMAL,
    REASON_BACKOFF,
    REASON_DELETED,
    REASON_INIT_STARTED,
    REASON_PREFLIGHT,
    REASON_PREFLIGHT_PASSED,
    TERMINAL,
    WARNING,
    Decision,
    Event,
    Failure,
    Policy,
    classify,
    fail,
    fmt_time,
    parse_time,
    set_phase,
)


def initializing(st: LLMTrainingJobStatus) -> bool:
    """An initializer attempt is allocated and has not finished: the job waits for it."""
    ini = st.initializer
    return ini is not None and ini.attempt > 0 and ini.phase not in TERMINAL


def start(st: LLMTrainingJobStatus, attempt: int, now: datetime, d: Decision) -> None:
    """Initializer attempt `attempt` begins: its pod must exist (`d.ensure_init`)."""
    ini = st.initializer
    assert ini is not None
    ini.attempt, ini.phase, ini.message, ini.retry_after = attempt, Phase.Pending, None, None
    msg = f"initializer attempt {attempt}: fetching inputs, then the preflight"
    set_phase(st, Phase.Initializing, REASON_INIT_STARTED, msg, now)
    d.ensure_init = attempt


def step(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    pods: list[PodView],
    now: datetime,
    policy: Policy,
    d: Decision,
) -> bool:
    """The initializer pod's outcome: its preflight passed (True: the caller starts the first
    gang), failed (PreflightFailed, permanent: the job's own data, template or memory), or it
    failed otherwise (retried, as a stage attempt is)."""
    ini = st.initializer
    assert ini is not None
    pod = next((p for p in pods if p.stage == layout.INIT_STAGE and p.attempt == ini.attempt), None)
    due = parse_time(ini.retry_after)
    if ini.phase == Phase.Restarting:  # the failed pod holds nothing: no need to wait for it
        if due is None or now >= due:
            start(st, ini.attempt + 1, now, d)
        return False
    if pod is None:
        if ini.phase == Phase.Running:
            _failed(job, st, cur, Failure(REASON_DELETED, True, "pod was deleted"), now, policy, d)
        else:
            d.ensure_init = ini.attempt
        return False
    if pod.phase == "Succeeded":
        ini.phase, ini.message = Phase.Succeeded, None
        ini.preflight = _figures(pod.message)
        msg = "preflight passed: " + "; ".join(
            f"{f.stage}: {f.kept} kept, {f.dropped} dropped, "
            f"~{(f.memory_bytes or 0) / 2**30:.1f} GiB per GPU"
            for f in ini.preflight
        )
        d.events.append(Event(NORMAL, REASON_PREFLIGHT_PASSED, msg))
        return True
    if pod.phase == "Failed" or pod.deleting:
        failure = classify(pod)
        if not failure.retryable and pod.message:
            failure = Failure(REASON_PREFLIGHT, False, pod.message.strip().replace("\n", "; "))
        _failed(job, st, cur, failure, now, policy, d)
    elif pod.phase == "Running":
        ini.phase = Phase.Running
    return False


def _failed(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    failure: Failure,
    now: datetime,
    policy: Policy,
    d: Decision,
) -> None:
    ini = st.initializer
    assert ini is not None
    limit = job.spec.run_policy.backoff_limit
    where = f"initializer attempt {ini.attempt}"
    if not failure.retryable or ini.restarts >= limit:
        ini.phase, ini.message = Phase.Failed, failure.message
        reason = failure.reason if not failure.retryable else REASON_BACKOFF
        msg = f"{where}: {failure.message}"
        if failure.retryable:
            msg += f"; {ini.restarts} restart(s), backoffLimit is {limit}"
        fail(st, cur, reason, msg, now, d)
        return
    ini.restarts += 1
    ini.phase, ini.message = Phase.Restarting, failure.message
    wait = policy.backoff(ini.restarts)
    ini.retry_after = fmt_time(now + timedelta(seconds=math.ceil(wait)))
    msg = f"{where}: {failure.message}; retrying at {ini.retry_after}"
    set_phase(st, Phase.Restarting, failure.reason, msg, now)
    d.events.append(Event(WARNING, failure.reason, msg))
    d.restarts.append(failure.reason)


def _figures(message: str | None) -> list[api.StagePreflight]:
    """The preflight's figures from the initializer's termination message (compact JSON)."""
    try:
        rows = json.loads(message or "")["stages"]
        return [api.StagePreflight.model_validate(r) for r in rows]
    except (ValueError, KeyError, TypeError):
        return []


def unwanted(st: LLMTrainingJobStatus, pods: list[PodView]) -> list[str]:
    """Initializer pods to remove: older attempts, and a live one the job no longer waits
    for (suspended, failed). The last attempt's finished pod stays, for its logs."""
    ini = st.initializer
    attempt = ini.attempt if ini else 0
    waiting = initializing(st) and st.phase not in (Phase.Suspended, *TERMINAL)
    return [
        p.name
        for p in pods
        if not p.deleting
        and (p.attempt < attempt or (p.attempt == attempt and not p.terminal and not waiting))
    ]
