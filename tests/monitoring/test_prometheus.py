"""Every dashboard and alert query, run by a real Prometheus against live metrics endpoints.

    pytest tests/monitoring/test_prometheus.py

Prometheus (Debian's package; tests/monitoring/install-prometheus.sh) runs on 127.0.0.1 with
a temporary TSDB and scrapes, every second, with the job labels and honor_labels that the
chart's ServiceMonitor and PodMonitor give:

* the operator's endpoint: `llmtrain.operator.metrics.OperatorMetrics` serving on loopback,
  fed the events of a job's life through its public methods (the real operator process is
  scraped in tests/cluster/test_chart_monitoring.py);
* a training driver during a short run: `llmtrain worker` when the CLI has it, otherwise
  tests/monitoring/contract_exporter.py (a stand-in serving the §4 metrics).

Each dashboard query must return data (a finite value), except the GPU ones: NVIDIA's DCGM
exporter needs GPUs, and the trainer exports llmtrain_gpu_memory_allocated_bytes only when
CUDA is present. Those are still run, so a syntax error fails the test.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import dashboard, find, render, rules_file
from tests.monitoring.prom import (
    NEEDS_GPU,
    Prometheus,
    check_rules,
    check_variables,
    dashboard_gaps,
    free_port,
    scrape_config_for,
)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
NAMESPACE, JOB, STAGE = "team-a", "qs", "sft"
RELEASE_NS = "llmtrain-system"


@pytest.fixture
def operator_endpoint() -> Iterator[tuple[int, Any]]:
    from llmtrain.operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    port = free_port()
    metrics.serve("127.0.0.1", port)
    # A job that is Running, one that failed earlier, and the operator's bookkeeping.
    metrics.job_phase(NAMESPACE, JOB, "Running")
    metrics.job_phase(NAMESPACE, "older", "Failed")
    metrics.pods_created.inc(2)
    metrics.reconciles.labels(result="ok").inc()
    metrics.time_to_running.observe(4.0)
    yield port, metrics


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, str(HERE / "contract_exporter.py"), "--port", str(port),
            "--namespace", NAMESPACE, "--job", JOB, "--stage", STAGE, "--steps", "40"]
    log = (tmp_path / "driver.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_every_dashboard_and_alert_query_runs_on_real_prometheus(
    prometheus_bin: Path, tmp_path: Path, operator_endpoint: tuple[int, Any], driver: int
) -> None:
    op_port, op_metrics = operator_endpoint
    docs = render(namespace=RELEASE_NS)
    scrape = [
        scrape_config_for(find(docs, "ServiceMonitor"), f"127.0.0.1:{op_port}",
                          {"namespace": RELEASE_NS,
                           "service": find(docs, "Service")["metadata"]["name"]}),
        scrape_config_for(find(docs, "PodMonitor"), f"127.0.0.1:{driver}",
                          {"namespace": NAMESPACE, "pod": f"{JOB}-{STAGE}-a1-0"}),
    ]
    rules = rules_file(docs, tmp_path / "rules.yaml")
    start = time.time()
    with Prometheus(prometheus_bin, tmp_path, scrape, rule_files=[rules]) as prom:
        prom.wait_for_samples('llmtrain_train_step{job="qs"}')
        prom.wait_for_samples("llmtrain_jobs")
        # The rest of the job's life, while Prometheus watches: a restart, reconciles, a
        # stage that finished, a reconcile error.
        op_metrics.stage_restarts.labels(reason="PodFailed").inc()
        op_metrics.reconciles.labels(result="error").inc()
        op_metrics.reconcile_errors.inc()
        op_metrics.pods_created.inc(2)
        op_metrics.stage_duration.labels(type="pretrain").observe(95.0)
        prom.wait_for("the driver reached its last step",
                      lambda: prom.query('llmtrain_train_step{job="qs"} == 40'), timeout=90)
        time.sleep(3)  # a few more scrapes of the final values and counters
        end = time.time()

        # honor_labels kept the LLMTrainingJob's labels, not the scrape job's.
        (step,) = prom.query("llmtrain_train_step")
        assert step["metric"]["job"] == JOB and step["metric"]["namespace"] == NAMESPACE
        assert {"namespace": NAMESPACE, "phase": "Running"}.items() <= prom.query(
            'llmtrain_jobs{phase="Running"}')[0]["metric"].items()

        variables = {"namespace": NAMESPACE, "job": JOB, "stage": STAGE}
        dash = dashboard()
        gaps, gpu_seen = dashboard_gaps(prom, dash, variables, start, end)
        assert gaps == [], "dashboard queries without data:\n" + "\n".join(gaps)
        assert gpu_seen == set(NEEDS_GPU)
        check_variables(prom, dash, variables, start, end)
        check_rules(prom, find(docs, "PrometheusRule"))
        # A Failed job exists: LLMTrainJobFailed is pending (for: 1m) or firing already.
        alerts = {a["labels"]["alertname"]: a for a in prom.api("alerts")["alerts"]}
        assert alerts["LLMTrainJobFailed"]["labels"]["namespace"] == NAMESPACE
