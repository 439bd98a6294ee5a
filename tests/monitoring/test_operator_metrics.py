"""The operator's /metrics as Prometheus reads it: names, labels and which series go when.

    pytest tests/monitoring/test_operator_metrics.py

Served over HTTP by `OperatorMetrics.serve` and parsed with prometheus_client's own text
parser, as a scrape would. test_prometheus.py puts a real Prometheus in front of it.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from llmtrain.operator.metrics import OperatorMetrics
from tests.monitoring.prom import free_port


def scrape(port: int) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """{sample name: {sorted label pairs}} for every sample with value != 0 or a label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).add(tuple(sorted(s.labels.items())))
    return out


def test_per_job_series_come_and_go_with_the_job_and_the_replicas_role() -> None:
    m = OperatorMetrics()
    port = free_port()
    m.serve("127.0.0.1", port)
    m.job_phase("team-a", "qs", "Pending")
    m.job_phase("team-a", "qs", "Running")  # only the current phase is exported
    m.job_phase("team-a", "old", "Failed")
    m.job_phase("team-b", "other", "Running")
    m.stage_restarts.labels(namespace="team-a", job="qs", reason="PodFailed").inc()
    m.stage_restarts.labels(namespace="team-a", job="qs", reason="Stalled").inc()
    m.stage_restarts.labels(namespace="team-b", job="other", reason="PodFailed").inc()
    m.reconciles.labels(result="error").inc()
    m.pods_created.inc(3)

    got = scrape(port)
    assert got["llmtrain_operator_job_phase"] == {
        (("job", "qs"), ("namespace", "team-a"), ("phase", "Running")),
        (("job", "old"), ("namespace", "team-a"), ("phase", "Failed")),
        (("job", "other"), ("namespace", "team-b"), ("phase", "Running")),
    }
    assert got["llmtrain_operator_jobs"] == {
        (("namespace", "team-a"), ("phase", "Failed")),
        (("namespace", "team-a"), ("phase", "Running")),
        (("namespace", "team-b"), ("phase", "Running")),
    }
    assert len(got["llmtrain_operator_stage_restarts_total"]) == 3
    assert got["llmtrain_operator_reconciles_total"] == {(("result", "error"),)}
    assert "process_resident_memory_bytes" in got and "process_cpu_seconds_total" in got

    # A deleted job takes its phase and its restart counts along; others stay.
    m.job_phase("team-a", "qs", None)
    got = scrape(port)
    assert {dict(s)["job"] for s in got["llmtrain_operator_job_phase"]} == {"old", "other"}
    assert got["llmtrain_operator_stage_restarts_total"] == {
        (("job", "other"), ("namespace", "team-b"), ("reason", "PodFailed"))
    }

    # A replica that goes standby exports no per-job series; its process counters stay.
    m.forget_jobs()
    got = scrape(port)
    assert "llmtrain_operator_job_phase" not in got and "llmtrain_operator_jobs" not in got
    assert "llmtrain_operator_stage_restarts_total" not in got
    assert got["llmtrain_operator_pods_created_total"] == {()}
    assert got["llmtrain_operator_reconciles_total"] == {(("result", "error"),)}
