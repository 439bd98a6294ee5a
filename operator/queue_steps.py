"""The Kueue steps of the state machine (state.py): a stage waits, Queued, until Kueue
admits its Workload, and a gang Kueue evicts goes as a suspended one does. Pure.

    if not queue_steps.admitted(d):          # d.queue: Kueue's word on the stage (kueue.py)
        queue_steps.queue(st, cur, pods, now, d)
    elif st.phase == Phase.Queued and queue_steps.admit(st, cur, pods, now, d):
        ...                                  # admitted: state.py starts the next attempt
"""

from __future__ import annotations

from datetime import datetime

from llmtrain.operator.api import LLMTrainingJobStatus, Phase, StageStatus
from llmtrain.operator.progress import PodView
from llmtrain.operator.status import (
    COND_QUEUED,
    COND_SUSPENDED,
    LIVE,
    NORMAL,
    REASON_ADMITTED,
    REASON_QUEUED,
    REASON_RESUMED,
    REASON_SUSPENDED,
    WARNING,
    Decision,
    Event,
    condition,
    parse_time,
    set_condition,
    set_phase,
)


def admitted(d: Decision) -> bool:
    """Kueue lets the stage run: it admitted the Workload, or the job names no queue."""
    return d.queue is None or d.queue.admitted


def queue(
    st: LLMTrainingJobStatus, cur: StageStatus, pods: list[PodView], now: datetime, d: Decision
) -> None:
    """Kueue has not admitted the stage (or evicted it): no pods. An evicted gang goes like
    a suspended one (head first: its SIGTERM checkpoint lands), shown Suspended with
    Kueue's reason; once it is gone the reconciler re-queues the Workload: Queued."""
    q = d.queue
    assert q is not None
    where = f"stage {cur.name}"
    if cur.phase in (*LIVE, Phase.Restarting) and cur.attempt > 0:
        d.delete_attempts.append((cur.name, cur.attempt))
        cur.phase = Phase.Suspended
        st.start_time = None
        msg = f"{where}: evicted by Kueue ({q.evicted or 'admission withdrawn'}): {q.message}"
        msg = msg.rstrip(": ") + "; pods are removed after they checkpoint"
        set_phase(st, Phase.Suspended, q.evicted or REASON_SUSPENDED, msg, now)
        d.events.append(Event(WARNING, q.evicted or REASON_SUSPENDED, msg))
        return
    if q.evicted or any(p.stage == cur.name and p.attempt == cur.attempt for p in pods):
        return  # the evicted gang is still checkpointing and terminating
    why = "" if q.admitted else q.message  # admitted: the previous stage's, at a hand-off
    msg = f"{where}: waiting in queue {q.queue}" if q.queue else f"{where}: waiting for Kueue"
    msg += f": {why}" if why else ""
    queued = condition(st, COND_QUEUED)
    if st.phase != Phase.Queued or queued is None or queued.message != msg:
        if st.phase != Phase.Queued:
            d.events.append(Event(NORMAL, REASON_QUEUED, msg))
        cur.phase = Phase.Queued
        set_phase(st, Phase.Queued, REASON_QUEUED, msg, now)


def admit(
    st: LLMTrainingJobStatus, cur: StageStatus, pods: list[PodView], now: datetime, d: Decision
) -> bool:
    """Kueue admitted the stage's Workload: True once the caller may start its next attempt
    (a resumed one starts from the newest checkpoint)."""
    if any(p.stage == cur.name and p.attempt == cur.attempt for p in pods):
        return False  # the evicted gang is still terminating
    q = d.queue
    queued = condition(st, COND_QUEUED)
    if queued is not None and queued.status == "True":
        since = parse_time(queued.last_transition_time)
        d.queued_seconds = (now - since).total_seconds() if since else None
    msg = f"stage {cur.name}: admitted by Kueue" + (
        f" (ClusterQueue {q.cluster_queue})" if q and q.cluster_queue else ""
    )
    d.events.append(Event(NORMAL, REASON_ADMITTED, msg))
    set_condition(st, COND_QUEUED, False, REASON_ADMITTED, msg, now)
    if cur.attempt > 0:
        resumed = f"resumed at stage {cur.name}"
        set_condition(st, COND_SUSPENDED, False, REASON_RESUMED, resumed, now)
        d.events.append(Event(NORMAL, REASON_RESUMED, resumed))
    st.phase, st.reason = Phase.Initializing, REASON_ADMITTED
    return True
