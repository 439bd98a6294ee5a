"""The status vocabulary the state machine's modules share (state.py, init_steps.py,
queue_steps.py) and the reconciler reads: condition types and reasons, the time format,
what a pass gets and returns, and the primitives that write a status. Pure.

    d = Decision(status=st)                                 # what state.decide returns
    set_phase(st, Phase.Failed, REASON_BACKOFF, msg, now)   # the phase and its conditions
    c = condition(st, COND_FAILED)                          # c.reason == REASON_BACKOFF
    f = classify(pod)                                       # f.retryable: retried, or final
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from llmtrain.operator import kueue
from llmtrain.operator.api import Condition, LLMTrainingJobStatus, Phase, StageStatus
from llmtrain.operator.progress import PodView
from llmtrain.trainer.contract import retryable

# Condition types (metav1.Condition.type).
COND_CREATED = "Created"
COND_RUNNING = "Running"
COND_RESTARTING = "Restarting"
COND_SUSPENDED = "Suspended"
COND_QUEUED = "Queued"  # True while Kueue has not admitted the stage's Workload
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
# True while the apiserver refuses an attempt's objects (ReplicaSet's ReplicaFailure).
COND_CREATE_FAILED = "CreateFailed"
# True while a pod of the attempt cannot start: unschedulable, an image that will not pull.
COND_PODS_PENDING = "PodsPending"
# True while the driver's /metrics cannot be read: progress and the stall watchdog wait.
COND_PROGRESS_UNKNOWN = "ProgressUnknown"

# Reasons, on conditions and Events.
REASON_CREATED = "JobCreated"
REASON_STAGE_STARTED = "StageStarted"
REASON_RUNNING = "AllPodsRunning"
REASON_STAGE_SUCCEEDED = "StageSucceeded"
REASON_SUCCEEDED = "JobSucceeded"
REASON_POD_FAILED = "PodFailed"
REASON_PERMANENT = "PodFailedPermanently"
REASON_EVICTED = "PodEvicted"
REASON_PREEMPTED = "PodPreempted"
REASON_DELETED = "PodDeleted"
REASON_STALLED = "Stalled"
REASON_BACKOFF = "BackoffLimitExceeded"
REASON_DEADLINE = "DeadlineExceeded"
REASON_SUSPENDED = "Suspended"
REASON_RESUMED = "Resumed"
REASON_QUEUED = "Queued"
REASON_ADMITTED = "Admitted"
REASON_VALIDATION = "ValidationFailed"
REASON_INIT_STARTED = "InitializerStarted"
REASON_PREFLIGHT_PASSED = "PreflightPassed"
REASON_PREFLIGHT = "PreflightFailed"  # the initializer found the job's data or memory wrong
REASON_GATE_FAILED = "GateFailed"  # a stage's result metric is outside its gate
REASON_FAILED_CREATE = "FailedCreate"  # the reason the Job and ReplicaSet controllers use
REASON_PODS_CREATED = "PodsCreated"
REASON_PODS_STARTED = "PodsStarted"
REASON_SCRAPE_FAILED = "MetricsUnreadable"
REASON_SCRAPED = "MetricsRead"

NORMAL, WARNING = "Normal", "Warning"
TERMINAL = (Phase.Succeeded, Phase.Failed)
LIVE = (Phase.Pending, Phase.Initializing, Phase.Running)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


@dataclass(frozen=True)
class Scrape:
    """Metric values read from the driver of one attempt (docs/contracts.md §4), or why they
    could not be read."""

    stage: str
    attempt: int
    values: dict[str, float] | None
    error: str | None = None


@dataclass(frozen=True)
class Policy:
    """The operator's settings the decision depends on (`llmtrain operator` options)."""

    # Retries wait base * 2^(restarts-1) seconds, capped (the Job controller's shape).
    retry_backoff: float = 10.0
    retry_backoff_max: float = 300.0
    # A driver may take this long (Ray start, data preparation) before its /metrics is up,
    # or between two reads, before ProgressUnknown is raised.
    scrape_grace: float = 300.0
    # A permanent exit waits this long for the rest of the gang to report: pods of a gang
    # fail together (a head OOM-killed takes its workers along), and a more retryable
    # failure among them wins.
    permanent_grace: float = 10.0
    # One initializer pod (fetch inputs, preflight) before the first gang of every job.
    initializer: bool = False

    def backoff(self, restarts: int) -> float:
        return float(min(self.retry_backoff * 2 ** max(restarts - 1, 0), self.retry_backoff_max))


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    reason: str
    retryable: bool
    message: str


@dataclass
class Decision:
    status: LLMTrainingJobStatus
    ensure: tuple[str, int] | None = None  # (stage, attempt) whose objects must exist
    ensure_init: int | None = None  # the initializer attempt whose objects must exist
    delete_pods: list[str] = field(default_factory=list)
    delete_attempts: list[tuple[str, int]] = field(default_factory=list)  # ConfigMap + Service
    delete_job: bool = False  # ttlSecondsAfterFinished has passed
    events: list[Event] = field(default_factory=list)
    # Observations for the operator's metrics, recorded once the status write succeeded.
    stage_durations: list[tuple[str, float]] = field(default_factory=list)
    time_to_running: float | None = None
    restarts: list[str] = field(default_factory=list)
    # Kueue: what it says about the current stage's Workload (None: not Kueue-managed), and
    # how long the job waited when this pass saw it admitted.
    queue: kueue.Admission | None = None
    queued_seconds: float | None = None


# ---- conditions --------------------------------------------------------------------------


def set_condition(
    st: LLMTrainingJobStatus, type_: str, status: bool, reason: str, message: str, now: datetime
) -> None:
    """Upsert a condition; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    for c in st.conditions:
        if c.type == type_:
            if c.status != value:
                c.last_transition_time = fmt_time(now)
            c.status, c.reason, c.message = value, reason, message
            return
    st.conditions.append(
        Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=fmt_time(now),
        )
    )


def condition(st: LLMTrainingJobStatus, type_: str) -> Condition | None:
    return next((c for c in st.conditions if c.type == type_), None)


def set_phase(
    st: LLMTrainingJobStatus, phase: Phase, reason: str, message: str, now: datetime
) -> None:
    """The job's phase, and the conditions that mirror it: a condition turns True with the
    phase and False when the phase leaves it; a False one keeps the reason it flipped for,
    until the job finishes: then every one says how it ended (no old stage's text)."""
    st.phase = phase
    finished = phase in TERMINAL
    mirrors = [
        (COND_RUNNING, phase == Phase.Running),
        (COND_RESTARTING, phase == Phase.Restarting),
        (COND_SUSPENDED, phase == Phase.Suspended),
        (COND_QUEUED, phase == Phase.Queued),
    ]
    if finished:
        mirrors += [(COND_PODS_PENDING, False), (COND_PROGRESS_UNKNOWN, False)]
    for type_, on in mirrors:
        c = condition(st, type_)
        if on or (c is not None and (c.status == "True" or finished)):
            set_condition(st, type_, on, reason, message, now)
    if phase == Phase.Succeeded:
        set_condition(st, COND_SUCCEEDED, True, reason, message, now)
    if phase == Phase.Failed:
        set_condition(st, COND_FAILED, True, reason, message, now)
    st.reason = reason


def current_stage(st: LLMTrainingJobStatus | None) -> StageStatus | None:
    if st is None:
        return None
    return next((s for s in st.stages if s.name == st.current_stage), None)


# ---- failures ----------------------------------------------------------------------------

# DisruptionTarget condition reasons the kubelet, scheduler and eviction API write.
_PREEMPTION = {"PreemptionByScheduler", "PreemptionByKubeScheduler"}


def classify(p: PodView) -> Failure:
    """The trainer's exit-code contract, plus evictions, preemptions and deletions."""
    who = f"pod {p.name} (rank {p.rank})"
    if p.disruption in _PREEMPTION:
        return Failure(REASON_PREEMPTED, True, f"{who} was preempted")
    if p.reason == "Evicted" or p.disruption is not None:
        return Failure(REASON_EVICTED, True, f"{who} was evicted ({p.disruption or p.reason})")
    if p.deleting and p.phase != "Failed":
        return Failure(REASON_DELETED, True, f"{who} was deleted")
    if not retryable(p.exit_code):
        return Failure(REASON_PERMANENT, False, f"{who} exited with code {p.exit_code}")
    code = "no exit code" if p.exit_code is None else f"exit code {p.exit_code}"
    return Failure(REASON_POD_FAILED, True, f"{who} failed ({p.reason or 'Error'}, {code})")


def fail(
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    reason: str,
    message: str,
    now: datetime,
    d: Decision,
) -> None:
    """The stage fails, and the job with it, for good: a Warning Event says why."""
    cur.phase, cur.message = Phase.Failed, message
    cur.completion_time = st.completion_time = fmt_time(now)
    set_phase(st, Phase.Failed, reason, message, now)
    d.events.append(Event(WARNING, reason, message))
