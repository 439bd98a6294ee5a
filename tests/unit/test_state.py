"""The stage state machine as pure functions: each test plays the operator's passes by hand.

A pass is `decide(job, pods, now)`; `World` keeps the status it returns (as the apiserver
would) and the pods that exist, so a scenario reads like the cluster's history.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from llmtrain.operator import api, state, status
from llmtrain.operator.api import Phase
from llmtrain.operator.progress import PodView
from llmtrain.operator.status import Policy, Scrape

T0 = datetime(2026, 1, 1, tzinfo=UTC)

DOC: dict[str, Any] = {
    "apiVersion": "llmtrain.io/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {
        "name": "j",
        "namespace": "ns",
        "uid": "u1",
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    },
    "spec": {
        "model": {"source": "org/base"},
        "stages": [
            {"name": "sft", "type": "sft", "dataset": {"source": "d", "format": "messages"}},
            {"name": "dpo", "type": "dpo", "dataset": {"source": "p", "format": "preference"}},
        ],
        "resources": {"workers": 2, "gpusPerWorker": 1},
        "runPolicy": {"backoffLimit": 1, "stallTimeoutSeconds": 60},
    },
}


@dataclass
class World:
    """The apiserver's view: one job (spec + status) and its pods."""

    spec: dict[str, Any] = field(default_factory=dict)
    status: api.LLMTrainingJobStatus | None = None
    pods: dict[str, PodView] = field(default_factory=dict)
    now: datetime = T0
    last: status.Decision | None = None
    seen: list[PodView] = field(default_factory=list)  # the pods the last pass looked at
    # No retry backoff nor permanent grace unless a test asks; a short scrape grace.
    policy: Policy = field(
        default_factory=lambda: Policy(retry_backoff=0, scrape_grace=5, permanent_grace=0)
    )

    def job(self) -> api.LLMTrainingJob:
        doc = copy.deepcopy(DOC)
        doc["spec"].update(copy.deepcopy(self.spec))
        job = api.parse_job(doc)
        job.status = self.status
        return job

    def step(self, seconds: float = 1, scrape: Scrape | None = None) -> status.Decision:
        """One pass, then apply it as the operator and the cluster would."""
        self.now += timedelta(seconds=seconds)
        self.seen = list(self.pods.values())
        d = state.decide(self.job(), self.seen, self.now, scrape, self.policy)
        self.status, self.last = d.status, d
        for name in d.delete_pods:
            del self.pods[name]  # kwok deletes at once
        if d.ensure:
            stage, attempt = d.ensure
            for rank in range(self.job().spec.resources.workers):
                name = f"j-{stage}-a{attempt}-{rank}"
                self.pods.setdefault(
                    name, PodView(name, stage, attempt, rank, ip="127.0.0.5", owner_uid="u1")
                )
        return d

    def set(self, rank: int, phase: str, **kw: Any) -> None:
        cur = self.cur()
        name = f"j-{cur.name}-a{cur.attempt}-{rank}"
        self.pods[name] = replace(self.pods[name], phase=phase, **kw)

    def run_all(self) -> None:
        for name, p in list(self.pods.items()):
            if not p.terminal:
                self.pods[name] = replace(p, phase="Running")

    def cur(self) -> api.StageStatus:
        cur = status.current_stage(self.status)
        assert cur is not None
        return cur

    def cond(self, type_: str) -> api.Condition | None:
        assert self.status is not None
        return status.condition(self.status, type_)


def running(w: World | None = None) -> World:
    w = w or World()
    w.step()
    w.step()  # pods observed: Initializing
    w.run_all()
    w.step()
    assert w.status is not None and w.status.phase == Phase.Running
    return w


def test_first_pass_starts_attempt_one() -> None:
    w = World()
    d = w.step()
    assert d.ensure == ("sft", 1)
    st = w.status
    assert st is not None
    assert st.phase == Phase.Pending and st.current_stage == "sft"
    assert [s.name for s in st.stages] == ["sft", "dpo"]
    assert (st.stages[0].attempt, st.stages[0].phase) == (1, Phase.Pending)
    assert st.start_time is None and st.observed_generation == 1  # no pod exists yet
    created = w.cond(status.COND_CREATED)
    assert created is not None and created.message == "2 stage(s): sft, dpo"
    assert (st.stage_summary, st.restarts, st.reason) == (
        "sft (1/2)",
        0,
        status.REASON_STAGE_STARTED,
    )
    w.step()  # the pods exist: the clock of activeDeadlineSeconds starts
    assert w.status is not None and w.status.start_time == "2026-01-01T00:00:02Z"


def test_pending_initializing_running() -> None:
    w = World()
    w.step()
    d = w.step()
    assert w.status is not None and w.status.phase == Phase.Initializing and d.ensure is None
    w.set(0, "Running")
    w.step()
    assert w.status.phase == Phase.Initializing  # rank 1 not running yet
    w.set(1, "Running")
    d = w.step()
    assert w.status.phase == Phase.Running and w.cur().phase == Phase.Running
    c = w.cond(status.COND_RUNNING)
    assert c is not None and (c.status, c.reason) == ("True", status.REASON_RUNNING)
    assert d.time_to_running == 4.0
    assert [e.reason for e in d.events] == [status.REASON_RUNNING]
    assert w.step().status == w.status  # a quiet pass changes nothing


def test_stage_success_starts_next_stage_from_its_output() -> None:
    w = running()
    w.set(0, "Succeeded", exit_code=0)
    d = w.step()
    st = w.status
    assert st is not None
    sft, dpo = st.stages
    assert sft.phase == Phase.Succeeded and sft.output == "/storage/j/sft/final"
    assert st.current_stage == "dpo" and dpo.attempt == 1 and d.ensure == ("dpo", 1)
    assert d.delete_pods == ["j-sft-a1-1"]  # rank 0 stays for its logs
    assert d.stage_durations and d.stage_durations[0][0] == "sft"
    reasons = {e.reason for e in d.events}
    assert reasons == {status.REASON_STAGE_SUCCEEDED, status.REASON_STAGE_STARTED}
    running(w)
    w.set(0, "Succeeded", exit_code=0)
    d = w.step()
    assert w.status.phase == Phase.Succeeded and w.status.completion_time
    assert w.cond(status.COND_SUCCEEDED).status == "True"  # type: ignore[union-attr]
    assert w.cond(status.COND_RUNNING).status == "False"  # type: ignore[union-attr]
    assert sorted(w.pods) == ["j-dpo-a1-0", "j-sft-a1-0"]
    assert w.step().status == w.status


@pytest.mark.parametrize(
    "pod, reason",
    [
        (dict(phase="Failed", exit_code=137, reason="OOMKilled"), status.REASON_POD_FAILED),
        (dict(phase="Failed", exit_code=143), status.REASON_POD_FAILED),
        (dict(phase="Failed", reason="Evicted"), status.REASON_EVICTED),
        (dict(phase="Failed", disruption="PreemptionByScheduler"), status.REASON_PREEMPTED),
        (dict(deleting=True), status.REASON_DELETED),
        (dict(phase="Failed"), status.REASON_POD_FAILED),
        (dict(phase="Failed", exit_code=75), status.REASON_POD_FAILED),  # ExitCode.RETRYABLE
        (dict(phase="Failed", exit_code=1), status.REASON_POD_FAILED),  # unknown: transient
    ],
)
def test_retryable_failure_restarts_the_gang(pod: dict[str, Any], reason: str) -> None:
    w = running()
    w.set(1, **{"phase": "Running", **pod})
    d = w.step()
    cur = w.cur()
    assert (cur.phase, cur.attempt, cur.restarts) == (Phase.Restarting, 1, 1)
    assert w.status is not None and w.status.phase == Phase.Restarting
    assert d.restarts == [reason]
    assert d.delete_attempts == [("sft", 1)]
    assert set(d.delete_pods) == {"j-sft-a1-0", "j-sft-a1-1"} - (
        {"j-sft-a1-1"} if pod.get("deleting") else set()
    )
    w.pods.clear()  # the old gang is gone
    d = w.step()
    assert (w.cur().attempt, w.cur().phase) == (2, Phase.Pending) and d.ensure == ("sft", 2)
    assert w.status.phase == Phase.Restarting  # until the new gang runs
    w.step()
    w.run_all()
    w.step()
    assert w.status.phase == Phase.Running
    assert w.cond(status.COND_RESTARTING).status == "False"  # type: ignore[union-attr]


def test_a_deleted_pod_is_a_gang_failure() -> None:
    w = running()
    del w.pods["j-sft-a1-1"]
    w.step()
    assert w.cur().phase == Phase.Restarting and w.last is not None
    assert w.last.restarts == [status.REASON_DELETED]


def test_restart_waits_for_the_old_gang_to_terminate() -> None:
    w = running()
    w.set(1, "Failed", exit_code=137)
    w.step()
    w.pods["j-sft-a1-0"] = replace(
        w.pods.get("j-sft-a1-0") or PodView("j-sft-a1-0", "sft", 1, 0, owner_uid="u1"),
        deleting=True,
        phase="Running",
    )
    d = w.step()
    assert w.cur().phase == Phase.Restarting and d.ensure is None and d.delete_pods == []


def test_permanent_exit_code_fails_the_job() -> None:
    w = running()
    w.set(0, "Failed", exit_code=2)  # ExitCode.PERMANENT: bad data, config or template
    d = w.step()
    st = w.status
    assert st is not None and st.phase == Phase.Failed and w.cur().phase == Phase.Failed
    failed = w.cond(status.COND_FAILED)
    assert failed is not None and failed.reason == status.REASON_PERMANENT
    assert "exited with code 2" in failed.message
    assert d.delete_pods == ["j-sft-a1-1"]  # the failed rank 0 stays for its logs
    assert d.restarts == []
    # Every condition says how the job ended, not what an earlier stage did.
    running_cond = w.cond(status.COND_RUNNING)
    assert running_cond is not None and running_cond.status == "False"
    assert running_cond.reason == status.REASON_PERMANENT and st.reason == status.REASON_PERMANENT


def test_the_pod_that_failed_first_is_kept_with_rank_0() -> None:
    w = running()
    w.set(1, "Failed", exit_code=2, finished_at="2026-01-01T00:00:03Z")
    d = w.step()
    assert w.status is not None and w.status.phase == Phase.Failed
    assert d.delete_pods == ["j-sft-a1-0"]  # still running: its GPUs go back
    assert sorted(w.pods) == ["j-sft-a1-1"] and w.step(3600).delete_pods == []
    # Both terminated: both stay for their logs (until ttlSecondsAfterFinished).
    w = running()
    w.set(1, "Failed", exit_code=2, finished_at="2026-01-01T00:00:03Z")
    w.set(0, "Failed", exit_code=2, finished_at="2026-01-01T00:00:09Z")
    assert w.step().delete_pods == [] and sorted(w.pods) == ["j-sft-a1-0", "j-sft-a1-1"]


def test_the_gang_is_judged_by_its_most_retryable_failure() -> None:
    """A head OOM-killed takes the workers down; a worker's exit must not make it final."""
    w = running()
    w.set(0, "Failed", exit_code=137, reason="OOMKilled")
    w.set(1, "Failed", exit_code=2)
    d = w.step()
    assert w.cur().phase == Phase.Restarting and d.restarts == [status.REASON_POD_FAILED]


def test_a_permanent_exit_waits_for_the_rest_of_the_gang() -> None:
    """The worker reports first, the OOM-killed head a moment later: a retry, not a failure."""
    w = running(World(policy=Policy(retry_backoff=0, permanent_grace=10)))
    w.set(1, "Failed", exit_code=2, finished_at=status.fmt_time(w.now))
    d = w.step(3)
    assert w.cur().phase == Phase.Running and d.restarts == [] and d.delete_pods == []
    w.set(0, "Failed", exit_code=137, reason="OOMKilled", finished_at=status.fmt_time(w.now))
    assert w.step().restarts == [status.REASON_POD_FAILED]
    # Alone, it fails the job once the grace is over (or at once when no pod still runs).
    w = running(World(policy=Policy(retry_backoff=0, permanent_grace=10)))
    w.set(1, "Failed", exit_code=2, finished_at=status.fmt_time(w.now))
    assert w.step(3).status.phase == Phase.Running
    assert w.step(8).status.phase == Phase.Failed


def test_retries_back_off_exponentially_and_say_when() -> None:
    w = running(
        World(
            spec={"runPolicy": {"backoffLimit": 5}},
            policy=Policy(retry_backoff=10, retry_backoff_max=15),
        )
    )
    for n, wait in ((1, 10), (2, 15)):  # 10 s, then 20 s capped at 15
        w.set(1, "Failed", exit_code=137)
        w.step()
        failed_at = w.now
        cur = w.cur()
        assert cur.retry_after == status.fmt_time(failed_at + timedelta(seconds=wait))
        restarting = w.cond(status.COND_RESTARTING)
        assert restarting is not None and f"at {cur.retry_after} (backoff {wait}s)" in (
            restarting.message
        )
        w.pods.clear()
        assert w.step().ensure is None  # the gang is gone, but the backoff is not over
        d = w.step(wait - 1)
        assert d.ensure == ("sft", n + 1) and w.cur().retry_after is None
        running(w)
    assert w.status is not None and (w.status.restarts, w.status.stage_summary) == (2, "sft (1/2)")


def test_backoff_limit_is_per_stage_and_survives_in_status() -> None:
    w = running()
    w.set(1, "Failed", exit_code=137)
    w.step()
    w.step()
    running(w)
    assert w.cur().attempt == 2 and w.cur().restarts == 1
    w.set(0, "Failed", exit_code=255)
    w.step()
    failed = w.cond(status.COND_FAILED)
    assert w.status is not None and w.status.phase == Phase.Failed
    assert failed is not None and failed.reason == status.REASON_BACKOFF


def test_progress_is_copied_and_stall_restarts() -> None:
    w = running()
    values = {
        "llmtrain_train_step": 10.0,
        "llmtrain_train_total_steps": 400.0,
        "llmtrain_train_loss": 1.234567891,
        "llmtrain_tokens_per_second": 1500.0,
        "llmtrain_eta_seconds": 3600.0,
        "llmtrain_checkpoint_step": 5.0,
        "llmtrain_learning_rate": 2e-5,
        "llmtrain_eval_loss": float("nan"),
    }
    w.step(scrape=Scrape("sft", 1, values))
    st, cur = w.status, w.cur()
    assert st is not None and st.progress == "10/400" and st.loss == 1.23457
    assert (cur.progress.step, cur.progress.total_steps) == (10, 400)
    assert cur.progress.tokens_per_second == 1500.0 and cur.progress.eta_seconds == 3600.0
    assert cur.progress.eval_loss is None
    assert cur.metrics["learning_rate"] == 2e-5
    assert cur.last_checkpoint == "/storage/j/sft/checkpoints/checkpoint-5"
    assert cur.last_progress_time == "2026-01-01T00:00:04Z"
    w.step(30, scrape=Scrape("sft", 1, values))  # same step
    assert w.cur().phase == Phase.Running
    w.step(1, scrape=Scrape("dpo", 1, {"llmtrain_train_step": 99.0}))  # not ours: ignored
    assert w.cur().progress.step == 10
    assert w.step(30).restarts == []  # without a reading, nobody can say it stalled
    d = w.step(1, scrape=Scrape("sft", 1, values))
    assert w.cur().phase == Phase.Restarting and d.restarts == [status.REASON_STALLED]


def test_an_unreadable_driver_is_progress_unknown_not_a_stall() -> None:
    w = running()  # stallTimeoutSeconds 60, scrape grace 5 s
    refused = Scrape("sft", 1, None, "connection refused")
    assert w.step(1, scrape=refused).events == []  # still starting up: within the grace
    assert w.cond(status.COND_PROGRESS_UNKNOWN) is None
    d = w.step(10, scrape=refused)
    unknown = w.cond(status.COND_PROGRESS_UNKNOWN)
    assert unknown is not None and unknown.status == "True"
    assert unknown.reason == status.REASON_SCRAPE_FAILED and "connection refused" in unknown.message
    assert [e.reason for e in d.events] == [status.REASON_SCRAPE_FAILED]
    for _ in range(5):  # far past the stall timeout: the healthy gang keeps running
        d = w.step(60, scrape=refused)
        assert d.events == [] and d.restarts == [] and w.cur().phase == Phase.Running
    w.step(1, scrape=Scrape("sft", 1, {"llmtrain_train_step": 3.0}))
    unknown = w.cond(status.COND_PROGRESS_UNKNOWN)
    assert unknown is not None and unknown.status == "False" and w.cur().progress.step == 3


def test_pods_that_cannot_start_say_why_once_per_reason() -> None:
    w = World()
    w.step()
    unbound = (
        "Unschedulable",
        "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
    )
    w.pods["j-sft-a1-1"] = replace(w.pods["j-sft-a1-1"], waiting=unbound)
    d = w.step()
    c = w.cond(status.COND_PODS_PENDING)
    assert c is not None and (c.status, c.reason) == ("True", "Unschedulable")
    assert c.message == f"stage sft attempt 1: pod j-sft-a1-1: {unbound[1]}"
    assert [e.reason for e in d.events] == ["Unschedulable"]
    assert w.step().events == []  # same reason: no new event
    w.pods["j-sft-a1-1"] = replace(w.pods["j-sft-a1-1"], waiting=("ErrImagePull", "trainer: x"))
    assert [e.reason for e in w.step().events] == ["ErrImagePull"]
    w.run_all()
    w.pods["j-sft-a1-1"] = replace(w.pods["j-sft-a1-1"], waiting=None)
    w.step()
    c = w.cond(status.COND_PODS_PENDING)
    assert c is not None and c.status == "False" and w.status.phase == Phase.Running


def test_pods_of_another_owner_are_never_adopted() -> None:
    w = running()
    orphan = PodView("j-sft-a1-0", "sft", 1, 0, "Failed", 2, owner_uid="old-uid")
    d = state.decide(w.job(), [orphan, w.pods["j-sft-a1-1"]], w.now, policy=w.policy)
    assert d.status.phase != Phase.Failed  # its exit 2 is not ours
    # Our rank 0 is gone: a restart, which removes our rank 1 but never the orphan.
    assert d.restarts == [status.REASON_DELETED] and d.delete_pods == ["j-sft-a1-1"]


def test_deadline_fails_and_removes_pods() -> None:
    w = World(spec={"runPolicy": {"activeDeadlineSeconds": 100}})
    running(w)
    d = w.step(200)
    assert w.status is not None and w.status.phase == Phase.Failed
    assert w.cond(status.COND_FAILED).reason == status.REASON_DEADLINE  # type: ignore[union-attr]
    assert d.delete_pods == ["j-sft-a1-0"]  # the head first: its SIGTERM asks for a checkpoint
    assert w.step().delete_pods == ["j-sft-a1-1"]  # then the workers it needed for that


def test_suspend_and_resume_starts_a_new_attempt() -> None:
    w = running()
    w.spec = {"suspend": True}
    d = w.step()
    assert w.status is not None and w.status.phase == Phase.Suspended
    assert d.delete_pods == ["j-sft-a1-0"] and d.ensure is None  # the head first
    w.pods["j-sft-a1-0"] = PodView(
        "j-sft-a1-0", "sft", 1, 0, "Running", deleting=True, owner_uid="u1"
    )  # checkpointing on its way out
    assert w.step().delete_pods == []  # its workers stay up for the checkpoint
    del w.pods["j-sft-a1-0"]
    assert w.step().delete_pods == ["j-sft-a1-1"]
    assert w.status.start_time is None
    assert w.step(1000).ensure is None  # nothing is created while suspended
    w.spec = {"suspend": False}
    d = w.step()
    assert d.ensure == ("sft", 2) and w.cur().restarts == 0
    assert w.cond(status.COND_SUSPENDED).reason == status.REASON_RESUMED  # type: ignore[union-attr]
    running(w)


def test_created_suspended_starts_nothing() -> None:
    w = World(spec={"suspend": True})
    d = w.step()
    assert w.status is not None and w.status.phase == Phase.Suspended and d.ensure is None
    w.spec = {}
    assert w.step().ensure == ("sft", 1)


def test_ttl_deletes_the_job_after_it_finished() -> None:
    w = World(spec={"runPolicy": {"ttlSecondsAfterFinished": 30}})
    running(w)
    w.set(0, "Failed", exit_code=2)
    w.step()
    assert not w.step(10).delete_job
    assert w.step(25).delete_job


def test_invalid_spec_is_a_failed_status() -> None:
    st = state.invalid(None, ["spec.stages[0].x: bad"], T0)
    assert st.phase == Phase.Failed
    c = status.condition(st, status.COND_FAILED)
    assert c is not None and c.reason == status.REASON_VALIDATION
    assert c.message == "spec.stages[0].x: bad"
    assert state.invalid(st, ["spec.stages[0].x: bad"], T0 + timedelta(1)) == st


def test_pods_ahead_of_the_status_are_never_deleted() -> None:
    w = running()
    stale = w.job()
    w.pods["j-sft-a2-0"] = PodView("j-sft-a2-0", "sft", 2, 0, owner_uid="u1")
    w.pods["j-dpo-a1-0"] = PodView("j-dpo-a1-0", "dpo", 1, 0, owner_uid="u1")
    # A stage no longer in the spec.
    w.pods["j-old-a1-0"] = PodView("j-old-a1-0", "old", 1, 0, owner_uid="u1")
    d = state.decide(stale, list(w.pods.values()), w.now)
    assert d.delete_pods == ["j-old-a1-0"]


def test_from_pod_reads_labels_exit_code_and_disruption() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "labels": {
                "llmtrain.io/stage": "s",
                "llmtrain.io/attempt": "3",
                "llmtrain.io/rank": "1",
            },
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {
            "phase": "Failed",
            "podIP": "127.100.0.4",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
            ],
        },
    }
    v = PodView.from_pod(pod)
    assert v == PodView(
        "p", "s", 3, 1, "Failed", 137, "OOMKilled", "EvictionByEvictionAPI", True, "127.100.0.4"
    )
    pending = {
        "metadata": {
            "name": "q",
            "labels": {
                "llmtrain.io/stage": "s",
                "llmtrain.io/attempt": "1",
                "llmtrain.io/rank": "0",
            },
            "ownerReferences": [{"uid": "u1", "controller": True}],
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available",
                }
            ],
        },
    }
    q = PodView.from_pod(pending)
    assert q is not None and q.owner_uid == "u1"
    assert q.waiting == ("Unschedulable", "0/3 nodes are available")
    pending["status"] = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    }
    assert PodView.from_pod(pending).waiting is None  # type: ignore[union-attr]  # on its way
    assert status.classify(v).reason == status.REASON_EVICTED
    assert PodView.from_pod({"metadata": {"name": "x", "labels": {}}}) is None


# ---- properties --------------------------------------------------------------------------

EVENTS = hs.lists(
    hs.tuples(
        hs.sampled_from(
            [
                "run",
                "succeed0",
                "fail0",
                "fail1",
                "oom1",
                "delete1",
                "tick",
                "suspend",
                "resume",
                "gone",
            ]
        ),
        hs.integers(1, 120),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(EVENTS)
def test_invariants_hold_under_any_history(events: list[tuple[str, int]]) -> None:
    """Whatever happens: attempts never go backwards, restarts stay within backoffLimit,
    a terminal job stays terminal, and a pass is idempotent: run again on the same
    observation, it reaches the same status and asks for the same actions."""
    w = World(spec={"runPolicy": {"backoffLimit": 2, "stallTimeoutSeconds": 300}})
    w.step()
    seen: dict[str, int] = {}
    for what, secs in events:
        cur = w.cur()
        mine = [n for n, p in w.pods.items() if (p.stage, p.attempt) == (cur.name, cur.attempt)]
        if what == "run":
            w.run_all()
        elif what == "suspend":
            w.spec = {**w.spec, "suspend": True}
        elif what == "resume":
            w.spec = {**w.spec, "suspend": False}
        elif what == "gone":
            w.pods.clear()
        elif mine:
            rank = 0 if what.endswith("0") else 1
            name = next((n for n in mine if w.pods[n].rank == rank), mine[0])
            p = w.pods[name]
            w.pods[name] = {
                "succeed0": replace(p, phase="Succeeded", exit_code=0),
                "fail0": replace(p, phase="Failed", exit_code=3),
                "fail1": replace(p, phase="Failed", exit_code=139),
                "oom1": replace(p, phase="Failed", exit_code=137, reason="OOMKilled"),
                "delete1": replace(p, deleting=True),
                "tick": p,
            }[what]
        before = w.status
        assert before is not None
        w.step(secs)
        after = w.status
        assert after is not None
        if before.phase in status.TERMINAL:
            assert after.phase == before.phase
        for s in after.stages:
            assert s.attempt >= seen.get(s.name, 0)
            assert s.restarts <= 2
            seen[s.name] = s.attempt
        again = state.decide(w.job(), w.seen, w.now, policy=w.policy)
        assert again.status == after
        assert w.last is not None and again.ensure == w.last.ensure
        assert set(again.delete_pods) == set(w.last.delete_pods)
