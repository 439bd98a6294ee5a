"""The stage state machine, as pure functions: what to do next, given what is observed.

    d = decide(job, pods=[PodView.from_pod(p) for p in pods], now=utcnow(), scrape=None)
    # d.status: the new status (write it if it changed), d.ensure: the attempt whose
    # objects must exist, d.delete_pods, d.events, and observations for the metrics.

Level-based: the decision depends only on the job (spec + its own status, which holds the
stage, attempt and restart counts) and the pods that exist now, so any pass, repeated or
after a restart, reaches the same answer. Per stage the phases are

    Pending (attempt N allocated, pods being created) -> Initializing (all pods exist)
      -> Running (all pods running) -> Succeeded (rank 0 exited 0)
    any failure -> Restarting (tear the gang down) -> Pending (attempt N+1) ... or Failed
    spec.suspend -> Suspended (pods removed) -> Pending (attempt N+1) on resume

and the job's phase follows its current stage. Exit codes follow the trainer's contract
(`llmtrain.trainer.contract.ExitCode`): only PERMANENT (the job's own mistake) fails the job
at once; every other failure (RETRYABLE, signals such as an OOM kill, unknown codes,
evictions, preemptions, deleted pods) is retried from the newest checkpoint, after an
exponential backoff, until `runPolicy.backoffLimit`.

The vocabulary (condition types, reasons, `Decision`, `Policy`) is in status.py; the
initializer's steps are in init_steps.py, Kueue's queueing and admission in queue_steps.py.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from llmtrain.operator import api, init_steps, kueue, layout, progress, queue_steps
from llmtrain.operator.api import LLMTrainingJobStatus, Phase, StageStatus
from llmtrain.operator.progress import PodView
from llmtrain.operator.status import (
    COND_CREATE_FAILED,
    COND_CREATED,
    COND_FAILED,
    COND_PODS_PENDING,
    COND_PROGRESS_UNKNOWN,
    COND_RUNNING,
    COND_SUSPENDED,
    LIVE,
    NORMAL,
    REASON_BACKOFF,
    REASON_CREATED,
    REASON_DEADLINE,
    REASON_DELETED,
    REASON_FAILED_CREATE,
    REASON_GATE_FAILED,
    REASON_PODS_CREATED,
    REASON_PODS_STARTED,
    REASON_RESUMED,
    REASON_RUNNING,
    REASON_SCRAPE_FAILED,
    REASON_SCRAPED,
    REASON_STAGE_STARTED,
    REASON_STAGE_SUCCEEDED,
    REASON_STALLED,
    REASON_SUCCEEDED,
    REASON_SUSPENDED,
    REASON_VALIDATION,
    TERMINAL,
    WARNING,
    Decision,
    Event,
    Failure,
    Policy,
    Scrape,
    classify,
    condition,
    current_stage,
    fail,
    fmt_time,
    parse_time,
    set_condition,
    set_phase,
)
from llmtrain.trainer.config import check_gates
from llmtrain.trainer.contract import checkpoint_dir

# ---- the decision ------------------------------------------------------------------------


def decide(
    job: api.LLMTrainingJob,
    pods: list[PodView],
    now: datetime,
    scrape: Scrape | None = None,
    policy: Policy = Policy(),
    queue: kueue.Admission | None = None,
) -> Decision:
    """The next status and actions for `job`, given its pods (and, optionally, metrics).
    Pods the job does not own (another uid: an orphan of a deleted namesake) are ignored.
    `queue`: Kueue's word on the current stage's Workload, for a job that names a queue."""
    st = (job.status or LLMTrainingJobStatus()).model_copy(deep=True)
    d = Decision(status=st, queue=queue)
    spec = job.spec
    uid = (job.metadata.model_extra or {}).get("uid")
    if uid:
        pods = [p for p in pods if p.owner_uid == uid]
    _sync_stages(st, job)
    generation = (job.metadata.model_extra or {}).get("generation")
    if isinstance(generation, int):
        st.observed_generation = generation

    if st.phase in TERMINAL:
        _expire(job, st, now, d)
        d.delete_pods = _unwanted(job, st, pods)
        _summarise(st)
        return d

    cur = current_stage(st)
    if cur is None:  # first pass
        cur = st.stages[0]
        st.current_stage = cur.name
        msg = f"{len(st.stages)} stage(s): {', '.join(s.name for s in st.stages)}"
        set_condition(st, COND_CREATED, True, REASON_CREATED, msg, now)
        st.reason = REASON_CREATED
        if policy.initializer:
            st.initializer = api.InitializerStatus()
        if not spec.suspend and queue_steps.admitted(d):
            _start_attempt(job, st, cur, 1, now, d)

    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(st.start_time)
    if deadline and started and not spec.suspend and now - started >= timedelta(seconds=deadline):
        msg = f"job ran longer than activeDeadlineSeconds={deadline}"
        fail(st, cur, REASON_DEADLINE, msg, now, d)
    elif spec.suspend:
        _suspend(st, cur, now, d)
    elif not queue_steps.admitted(d):
        queue_steps.queue(st, cur, pods, now, d)
    elif st.phase == Phase.Queued or (st.phase == Phase.Suspended and d.queue is not None):
        if queue_steps.admit(st, cur, pods, now, d):
            _start_attempt(job, st, cur, cur.attempt + 1, now, d)
    elif st.phase == Phase.Suspended:
        _resume(job, st, cur, pods, now, d)
    elif init_steps.initializing(st):
        if init_steps.step(job, st, cur, pods, now, policy, d):
            _start_attempt(job, st, cur, 1, now, d)  # the preflight passed
    else:
        _step(job, st, cur, pods, now, scrape, policy, d)
    d.delete_pods = _unwanted(job, st, pods)
    _summarise(st)
    return d


def _summarise(st: LLMTrainingJobStatus) -> None:
    """The fields `kubectl get llmtj` shows: `dpo (2/3)` and the restarts so far."""
    names = [s.name for s in st.stages]
    if st.current_stage in names:
        st.stage_summary = f"{st.current_stage} ({names.index(st.current_stage) + 1}/{len(names)})"
    st.restarts = sum(s.restarts for s in st.stages)


def invalid(
    status: LLMTrainingJobStatus | None, problems: list[str], now: datetime
) -> LLMTrainingJobStatus:
    """The status of a job whose spec does not validate: Failed, with every problem."""
    st = (status or LLMTrainingJobStatus()).model_copy(deep=True)
    message = "; ".join(problems)
    failed = condition(st, COND_FAILED)
    if st.phase != Phase.Failed or failed is None or failed.message != message:
        st.completion_time = st.completion_time or fmt_time(now)
        set_phase(st, Phase.Failed, REASON_VALIDATION, message, now)
    return st


def create_refused(
    status: LLMTrainingJobStatus, message: str, now: datetime
) -> LLMTrainingJobStatus:
    """The status once the apiserver refused an attempt's objects (a missing ServiceAccount,
    quota, admission): the job keeps waiting and retrying, and says why."""
    st = status.model_copy(deep=True)
    set_condition(st, COND_CREATE_FAILED, True, REASON_FAILED_CREATE, message, now)
    st.reason = REASON_FAILED_CREATE
    return st


def _sync_stages(st: LLMTrainingJobStatus, job: api.LLMTrainingJob) -> None:
    """One status entry per spec stage, in spec order (stages may change while suspended)."""
    by_name = {s.name: s for s in st.stages}
    st.stages = [by_name.get(s.name) or StageStatus(name=s.name) for s in job.spec.stages]


def _start_attempt(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    attempt: int,
    now: datetime,
    d: Decision,
) -> None:
    ini = st.initializer
    if ini is not None and ini.phase != Phase.Succeeded:  # no gang before the preflight
        init_steps.start(st, ini.attempt + 1, now, d)
        return
    cur.attempt, cur.phase = attempt, Phase.Pending
    cur.start_time = cur.start_time or fmt_time(now)
    cur.last_progress_time, cur.message, cur.retry_after = None, None, None
    first = layout.stage_index(job, cur.name) == 0 and attempt == 1
    if st.phase != Phase.Restarting:  # a retry stays Restarting until its gang runs
        phase = Phase.Pending if first else Phase.Initializing
        set_phase(st, phase, REASON_STAGE_STARTED, f"stage {cur.name} attempt {attempt}", now)
    d.ensure = (cur.name, attempt)


def _step(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    pods: list[PodView],
    now: datetime,
    scrape: Scrape | None,
    policy: Policy,
    d: Decision,
) -> None:
    """Advance a running (or restarting) stage by what its pods show."""
    mine = [p for p in pods if p.stage == cur.name and p.attempt == cur.attempt]
    if cur.phase in LIVE:
        _observe_gang(job, st, cur, mine, now, scrape, policy, d)
    # Retry once the old gang is gone (its SIGTERM checkpoint must land first) and the
    # backoff has passed.
    due = parse_time(cur.retry_after)
    if cur.phase == Phase.Restarting and not mine and (due is None or now >= due):
        _start_attempt(job, st, cur, cur.attempt + 1, now, d)


def _observe_gang(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    mine: list[PodView],
    now: datetime,
    scrape: Scrape | None,
    policy: Policy,
    d: Decision,
) -> None:
    workers = job.spec.resources.workers
    by_rank = {p.rank: p for p in mine}
    where = f"stage {cur.name} attempt {cur.attempt}"
    refused = condition(st, COND_CREATE_FAILED)
    if len(by_rank) >= workers:
        st.start_time = st.start_time or fmt_time(now)  # the deadline counts from here
        if refused is not None and refused.status == "True":
            msg = f"{where}: all {workers} pod(s) created"
            set_condition(st, COND_CREATE_FAILED, False, REASON_PODS_CREATED, msg, now)
    head = by_rank.get(0)
    if head is not None and head.phase == "Succeeded":
        if _gates_pass(job, st, cur, head, now, d):
            _stage_succeeded(job, st, cur, now, d)
        return
    failure = _gang_failure(cur, by_rank, workers, now, policy)
    if failure is None and cur.phase == Phase.Running:
        failure = _progress(job, st, cur, scrape, now, policy, d)
    if failure is not None:
        _attempt_failed(job, st, cur, failure, now, policy, d)
        return
    _pending(st, mine, where, now, d)
    if len(by_rank) < workers:
        d.ensure = (cur.name, cur.attempt)
    elif all(p.phase == "Running" for p in by_rank.values()):
        if cur.phase != Phase.Running:
            if condition(st, COND_RUNNING) is None and job.metadata.model_extra:
                created = parse_time(job.metadata.model_extra.get("creationTimestamp"))
                d.time_to_running = (now - created).total_seconds() if created else None
            cur.phase, cur.last_progress_time = Phase.Running, fmt_time(now)
            msg = f"{where}: all {workers} pod(s) running"
            set_phase(st, Phase.Running, REASON_RUNNING, msg, now)
            d.events.append(Event(NORMAL, REASON_RUNNING, msg))
    elif cur.phase == Phase.Pending:
        cur.phase = Phase.Initializing
        if st.phase == Phase.Pending:
            set_phase(st, Phase.Initializing, REASON_STAGE_STARTED, where, now)


def _pending(
    st: LLMTrainingJobStatus, mine: list[PodView], where: str, now: datetime, d: Decision
) -> None:
    """PodsPending while a pod cannot start, with the scheduler's or kubelet's reason; one
    Event each time the reason changes."""
    stuck = next((p for p in sorted(mine, key=lambda p: p.rank) if p.waiting), None)
    c = condition(st, COND_PODS_PENDING)
    if stuck is not None and stuck.waiting is not None:
        reason, why = stuck.waiting
        msg = f"{where}: pod {stuck.name}: {why}".rstrip(": ")
        if c is None or c.status != "True" or c.reason != reason:
            d.events.append(Event(WARNING, reason, msg))
        set_condition(st, COND_PODS_PENDING, True, reason, msg, now)
        st.reason = reason
    elif c is not None and c.status == "True":
        set_condition(
            st, COND_PODS_PENDING, False, REASON_PODS_STARTED, f"{where}: pods started", now
        )


def _gang_failure(
    cur: StageStatus, by_rank: dict[int, PodView], workers: int, now: datetime, policy: Policy
) -> Failure | None:
    """Why the attempt's gang is broken, if it is. The most retryable failure wins: a head
    OOM-killed (137) takes its workers down with it, and their exits must not make it final,
    so a permanent exit waits `policy.permanent_grace` for the others while they still run."""
    found: list[tuple[Failure, PodView | None]] = []
    for rank in range(workers):
        p = by_rank.get(rank)
        if p is None:
            if cur.phase != Phase.Pending:  # it existed: Initializing means all were seen
                found.append((Failure(REASON_DELETED, True, f"rank {rank} pod was deleted"), p))
        elif p.deleting or p.phase == "Failed":
            found.append((classify(p), p))
    transient = [f for f, _ in found if f.retryable]
    if transient:
        return transient[0]
    if not found:
        return None
    failure, pod = found[0]
    ended = parse_time(pod.finished_at if pod else None) or now
    live = any(not p.terminal and not p.deleting for p in by_rank.values())
    if live and now - ended < timedelta(seconds=policy.permanent_grace):
        return None  # the rest of the gang may yet report a more retryable failure
    return failure


def _attempt_failed(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    failure: Failure,
    now: datetime,
    policy: Policy,
    d: Decision,
) -> None:
    limit = job.spec.run_policy.backoff_limit
    where = f"stage {cur.name} attempt {cur.attempt}"
    if not failure.retryable:
        fail(st, cur, failure.reason, f"{where}: {failure.message}", now, d)
        return
    if cur.restarts >= limit:
        msg = f"{where}: {failure.message}; {cur.restarts} restart(s), backoffLimit is {limit}"
        fail(st, cur, REASON_BACKOFF, msg, now, d)
        return
    cur.restarts += 1
    cur.phase = Phase.Restarting
    cur.message = failure.message
    wait = policy.backoff(cur.restarts)
    cur.retry_after = fmt_time(now + timedelta(seconds=math.ceil(wait)))
    msg = (
        f"{where}: {failure.message}; retrying as attempt {cur.attempt + 1} "
        f"at {cur.retry_after} (backoff {wait:g}s)"
    )
    set_phase(st, Phase.Restarting, failure.reason, msg, now)
    d.events.append(Event(WARNING, failure.reason, msg))
    d.restarts.append(failure.reason)
    d.delete_attempts.append((cur.name, cur.attempt))


def _stage_succeeded(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    now: datetime,
    d: Decision,
) -> None:
    cur.phase, cur.message = Phase.Succeeded, None
    cur.completion_time = fmt_time(now)
    cur.output = layout.stage_output(job, cur.name)
    if cur.progress.total_steps:
        cur.progress.step = cur.progress.total_steps
        st.progress = f"{cur.progress.step}/{cur.progress.total_steps}"
    started = parse_time(cur.start_time)
    index = layout.stage_index(job, cur.name)
    stage_type = job.spec.stages[index].type
    if started:
        d.stage_durations.append((str(stage_type), (now - started).total_seconds()))
    d.events.append(
        Event(NORMAL, REASON_STAGE_SUCCEEDED, f"stage {cur.name} succeeded; output {cur.output}")
    )
    if index + 1 < len(st.stages):
        nxt = st.stages[index + 1]
        st.current_stage = nxt.name
        st.progress, st.loss = None, None
        if d.queue is not None:  # the next stage's Workload queues first
            queue_steps.queue(st, nxt, [], now, d)
            return
        d.events.append(Event(NORMAL, REASON_STAGE_STARTED, f"stage {nxt.name} started"))
        _start_attempt(job, st, nxt, 1, now, d)
        return
    st.completion_time = fmt_time(now)
    msg = f"all {len(st.stages)} stage(s) succeeded"
    set_phase(st, Phase.Succeeded, REASON_SUCCEEDED, msg, now)
    d.events.append(Event(NORMAL, REASON_SUCCEEDED, msg))


def _gates_pass(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    head: PodView,
    now: datetime,
    d: Decision,
) -> bool:
    """Decide the stage's gates on the metrics its driver reported (the termination message
    of the rank-0 pod); a failed gate fails the job (GateFailed) before the next stage."""
    gates = job.spec.stages[layout.stage_index(job, cur.name)].gates
    if not gates:
        return True
    results = check_gates(list(gates), progress.result_metrics(head.message))
    cur.gates = [api.GateStatus.model_validate(r) for r in results]
    failed = [r["message"] for r in results if not r["passed"]]
    if not failed:
        return True
    st.failed_gate = f"{cur.name}: {'; '.join(failed)}"
    fail(st, cur, REASON_GATE_FAILED, f"stage {cur.name}: gate failed: {'; '.join(failed)}", now, d)
    return False


def _suspend(st: LLMTrainingJobStatus, cur: StageStatus, now: datetime, d: Decision) -> None:
    if st.phase == Phase.Suspended:
        return
    if cur.attempt > 0:
        d.delete_attempts.append((cur.name, cur.attempt))
    cur.phase = Phase.Suspended
    st.start_time = None  # like a Job: the deadline clock restarts on resume
    msg = f"suspended at stage {cur.name}; pods are removed after they checkpoint"
    set_phase(st, Phase.Suspended, REASON_SUSPENDED, msg, now)
    d.events.append(Event(NORMAL, REASON_SUSPENDED, msg))


def _resume(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    pods: list[PodView],
    now: datetime,
    d: Decision,
) -> None:
    if any(p.stage == cur.name and p.attempt == cur.attempt for p in pods):
        return  # the suspended gang is still checkpointing and terminating
    msg = f"resumed at stage {cur.name}"
    set_condition(st, COND_SUSPENDED, False, REASON_RESUMED, msg, now)
    st.phase, st.reason = Phase.Initializing, REASON_RESUMED
    d.events.append(Event(NORMAL, REASON_RESUMED, msg))
    _start_attempt(job, st, cur, cur.attempt + 1, now, d)


def _expire(job: api.LLMTrainingJob, st: LLMTrainingJobStatus, now: datetime, d: Decision) -> None:
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    done = parse_time(st.completion_time)
    if ttl is not None and done is not None and now - done >= timedelta(seconds=ttl):
        d.delete_job = True


def _unwanted(job: api.LLMTrainingJob, st: LLMTrainingJobStatus, pods: list[PodView]) -> list[str]:
    """Pods to remove: every pod behind the current attempt, or of an attempt that ended,
    except, for their logs, the finished rank-0 pod of each stage's last attempt and, when
    the job failed, the pod that failed first. Terminated pods hold no resources.

    Pods *ahead* of the status (a later stage or attempt) are left alone: a status read
    that lags behind our own last write must never tear down the newer gang.

    A gang goes head first: the driver's SIGTERM asks every Ray Train worker to checkpoint,
    and the workers' pods must still be up to do it; they go once the head has.
    """
    cur = current_stage(st)
    if cur is None:
        return []
    init = [p for p in pods if p.stage == layout.INIT_STAGE]
    pods = [p for p in pods if p.stage != layout.INIT_STAGE]
    order = {s.name: i for i, s in enumerate(job.spec.stages)}
    here = (order.get(cur.name, -1), cur.attempt)
    live = cur.phase in LIVE and st.phase not in TERMINAL and st.phase != Phase.Suspended
    last = {s.name: s.attempt for s in st.stages if s.phase in TERMINAL}
    keep = set()
    if st.phase == Phase.Failed:
        failed = [
            p
            for p in pods
            if (p.stage, p.attempt) == (cur.name, cur.attempt) and p.phase == "Failed"
        ]
        first = min(failed, key=lambda p: (p.finished_at or "~", p.rank), default=None)
        keep = {first.name} if first else set()
    # Gangs whose driver still runs (or is checkpointing on its way out).
    heads = {(p.stage, p.attempt) for p in pods if p.rank == 0 and not p.terminal}
    out = []
    for p in pods:
        at = (order.get(p.stage, -1), p.attempt)
        if p.deleting or at > here or (at == here and live) or p.name in keep:
            continue
        if p.rank == 0 and p.terminal and last.get(p.stage) == p.attempt:
            continue
        if p.rank != 0 and (p.stage, p.attempt) in heads and not p.terminal:
            continue  # after its head
        out.append(p.name)
    return out + init_steps.unwanted(st, init)


# ---- progress ----------------------------------------------------------------------------


def _progress(
    job: api.LLMTrainingJob,
    st: LLMTrainingJobStatus,
    cur: StageStatus,
    scrape: Scrape | None,
    now: datetime,
    policy: Policy,
    d: Decision,
) -> Failure | None:
    """Fold a scrape of the driver into the status; a Stalled failure when the step stood
    still for stallTimeoutSeconds. Only a driver we can read can be called stalled: one we
    cannot read gets ProgressUnknown (once past the start-up grace) and keeps running."""
    if scrape is None or (scrape.stage, scrape.attempt) != (cur.name, cur.attempt):
        return None
    since = parse_time(cur.last_progress_time) or now
    unknown = condition(st, COND_PROGRESS_UNKNOWN)
    if scrape.values is None:
        if now - since >= timedelta(seconds=policy.scrape_grace):
            msg = f"stage {cur.name}: cannot read the driver's metrics: {scrape.error}"
            if unknown is None or unknown.status != "True":
                d.events.append(Event(WARNING, REASON_SCRAPE_FAILED, msg))
            set_condition(st, COND_PROGRESS_UNKNOWN, True, REASON_SCRAPE_FAILED, msg, now)
        return None
    if unknown is not None and unknown.status == "True":
        # The stall clock restarts: the step may well have moved while we could not look.
        set_condition(
            st,
            COND_PROGRESS_UNKNOWN,
            False,
            REASON_SCRAPED,
            f"stage {cur.name}: metrics readable again",
            now,
        )
        cur.last_progress_time = fmt_time(now)
    new, cur.metrics, ckpt = progress.fold(cur.progress, scrape.values)
    if new.step != cur.progress.step:
        cur.last_progress_time = fmt_time(now)
    cur.progress = new
    if ckpt > 0:
        out = layout.stage_config(job, cur.name).output_dir
        cur.last_checkpoint = checkpoint_dir(out, ckpt)
    st.progress = f"{new.step}/{new.total_steps}"
    st.loss = new.loss
    return _stalled(job, cur, now)


def _stalled(job: api.LLMTrainingJob, cur: StageStatus, now: datetime) -> Failure | None:
    timeout = job.spec.run_policy.stall_timeout_seconds
    since = parse_time(cur.last_progress_time)
    if timeout and since and now - since >= timedelta(seconds=timeout):
        return Failure(
            REASON_STALLED, True, f"step {cur.progress.step} has not advanced for {timeout}s"
        )
    return None
