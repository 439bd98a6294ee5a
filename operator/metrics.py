"""The operator's own Prometheus metrics (docs/contracts.md §5), all `llmtrain_operator_*`.

    m = OperatorMetrics()                  # its own registry (and process_*), so tests can
    m.serve("0.0.0.0", 9090)               # make several; GET /metrics
    m.job_phase("ns", "job", "Running")    # llmtrain_operator_job_phase / _jobs are computed
    m.job_phase("ns", "job", None)         # the job is gone: forget its series
    m.forget_jobs()                        # this replica went standby

Only the active replica reconciles, so only it exports per-job series (`namespace`, `job`
labels): a replica that goes standby forgets them, and the one that takes over rebuilds
them from the jobs it sees. Process-wide counters (reconciles, pods created) and the
histograms stay with the process that counted them.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "llmtrain_operator_"
# Stages last minutes to days.
_STAGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
# Creation to Running: admission, scheduling, image pulls.
_START_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _Jobs(Collector):
    """The last phase seen per job, exported at scrape time as

    * llmtrain_operator_jobs{namespace, phase}: how many jobs are in each phase;
    * llmtrain_operator_job_phase{namespace, job, phase}: 1 for each job's current phase
      only (like kube-state-metrics' kube_pod_status_phase, without the zeros).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, job: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, job), None)
            else:
                self._phases[(namespace, job)] = phase

    def clear(self) -> None:
        with self._lock:
            self._phases.clear()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            phases = sorted(self._phases.items())
        counts = Tally((ns, phase) for (ns, _), phase in phases)
        jobs = GaugeMetricFamily(
            f"{PREFIX}jobs", "LLMTrainingJobs by phase.", labels=["namespace", "phase"]
        )
        for (ns, phase), n in sorted(counts.items()):
            jobs.add_metric([ns, phase], n)
        yield jobs
        current = GaugeMetricFamily(
            f"{PREFIX}job_phase",
            "1 for the current phase of each LLMTrainingJob.",
            labels=["namespace", "job", "phase"],
        )
        for (ns, job), phase in phases:
            current.add_metric([ns, job, phase], 1)
        yield current


class _Gates(Collector):
    """llmtrain_gate_passed{namespace, job, stage, metric}: 1 or 0 for each gate decided,
    from the jobs' status (stages[].gates), so a restarted operator exports them again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}

    def set(self, namespace: str, job: str, gates: list[tuple[str, str, bool]] | None) -> None:
        with self._lock:
            if gates:
                self._gates[(namespace, job)] = gates
            else:
                self._gates.pop((namespace, job), None)

    def clear(self) -> None:
        with self._lock:
            self._gates.clear()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            items = sorted(self._gates.items())
        family = GaugeMetricFamily(
            "llmtrain_gate_passed",
            "1 when a stage's gate on a result metric passed, 0 when it failed the job.",
            labels=["namespace", "job", "stage", "metric"],
        )
        for (ns, job), gates in items:
            for stage, metric, passed in gates:
                family.add_metric([ns, job, stage, metric], 1.0 if passed else 0.0)
        yield family


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._jobs = _Jobs()
        self.registry.register(self._jobs)
        self._gates = _Gates()
        self.registry.register(self._gates)
        # process_cpu_seconds_total, process_resident_memory_bytes, ... (Linux /proc).
        ProcessCollector(registry=self.registry)
        self.stage_duration = Histogram(
            f"{PREFIX}stage_duration_seconds",
            "Wall time of succeeded stages, first attempt start to rank 0 success.",
            ["type"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.time_to_running = Histogram(
            f"{PREFIX}job_time_to_running_seconds",
            "Time from a job's creation until all pods of its first attempt run.",
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.reconciles = Counter(
            f"{PREFIX}reconciles",
            "Reconcile passes by result.",
            ["result"],
            registry=self.registry,
        )
        self.pods_created = Counter(
            f"{PREFIX}pods_created", "Worker pods created.", registry=self.registry
        )
        self.stage_restarts = Counter(
            f"{PREFIX}stage_restarts",
            "Stage attempts torn down and retried, by job and reason.",
            ["namespace", "job", "reason"],
            registry=self.registry,
        )
        self.queued_seconds = Counter(
            f"{PREFIX}job_queued_seconds",
            "Time jobs waited for Kueue to admit their stages, counted at each admission.",
            ["namespace", "job"],
            registry=self.registry,
        )

    def job_phase(self, namespace: str, job: str, phase: str | None) -> None:
        """Record a job's phase; None forgets a deleted job, with its restart counts."""
        self._jobs.set(namespace, job, phase)
        if phase is None:
            self._gates.set(namespace, job, None)
            self._forget_restarts(namespace, job)

    def forget_jobs(self) -> None:
        """Drop every per-job series: a standby replica exports none."""
        self._jobs.clear()
        self._gates.clear()
        self.stage_restarts.clear()
        self.queued_seconds.clear()

    def _forget_restarts(self, namespace: str, job: str) -> None:
        # Through collect(), not prometheus_client internals (remove_by_labels is 0.22+).
        for family in self.stage_restarts.collect():
            for s in family.samples:
                ours = s.labels["namespace"] == namespace and s.labels["job"] == job
                if ours and s.name.endswith("_total"):
                    self.stage_restarts.remove(namespace, job, s.labels["reason"])
        for family in self.queued_seconds.collect():
            for s in family.samples:
                ours = s.labels["namespace"] == namespace and s.labels["job"] == job
                if ours and s.name.endswith("_total"):
                    self.queued_seconds.remove(namespace, job)

    def gates(self, namespace: str, job: str, gates: list[tuple[str, str, bool]]) -> None:
        """Record the gates decided so far: (stage, metric, passed) each."""
        self._gates.set(namespace, job, gates)

    def serve(self, address: str, port: int) -> None:
        start_http_server(port, addr=address, registry=self.registry)
