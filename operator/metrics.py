"""The operator's own Prometheus metrics (docs/contracts.md §5).

    m = OperatorMetrics()                  # its own registry, so tests can make several
    m.serve("0.0.0.0", 9090)               # GET /metrics
    m.job_phase("ns", "job", "Running")    # llmtrain_jobs{namespace, phase} is computed

Only the active replica reconciles, so only it reports jobs and counts.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Stages last minutes to days.
_STAGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
# Creation to Running: admission, scheduling, image pulls.
_START_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _JobsByPhase(Collector):
    """llmtrain_jobs{namespace, phase}: counted at scrape time from the last phase seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, job: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, job), None)
            else:
                self._phases[(namespace, job)] = phase

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = Tally((ns, phase) for (ns, _), phase in self._phases.items())
        family = GaugeMetricFamily(
            "llmtrain_jobs", "LLMTrainingJobs by phase.", labels=["namespace", "phase"]
        )
        for (ns, phase), n in sorted(counts.items()):
            family.add_metric([ns, phase], n)
        yield family


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._jobs = _JobsByPhase()
        self.registry.register(self._jobs)
        self.stage_duration = Histogram(
            "llmtrain_stage_duration_seconds",
            "Wall time of succeeded stages, first attempt start to rank 0 success.",
            ["type"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.time_to_running = Histogram(
            "llmtrain_job_time_to_running_seconds",
            "Time from a job's creation until all pods of its first attempt run.",
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.reconciles = Counter(
            "llmtrain_reconciles", "Reconcile passes by result.", ["result"], registry=self.registry
        )
        self.reconcile_errors = Counter(
            "llmtrain_reconcile_errors", "Reconcile passes that raised.", registry=self.registry
        )
        self.pods_created = Counter(
            "llmtrain_pods_created", "Worker pods created.", registry=self.registry
        )
        self.stage_restarts = Counter(
            "llmtrain_stage_restarts",
            "Stage attempts torn down and retried, by reason.",
            ["reason"],
            registry=self.registry,
        )

    def job_phase(self, namespace: str, job: str, phase: str | None) -> None:
        """Record a job's phase; None forgets a deleted job."""
        self._jobs.set(namespace, job, phase)

    def serve(self, address: str, port: int) -> None:
        start_http_server(port, addr=address, registry=self.registry)
