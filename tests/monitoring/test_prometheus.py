"""Every dashboard and alert query, run by a real Prometheus against live metrics endpoints.

    pytest tests/monitoring/test_prometheus.py

Prometheus (Debian's package; tests/monitoring/install-prometheus.sh) runs on 127.0.0.1 with
a temporary TSDB and scrapes, every second, with the job labels and honor_labels that the
chart's ServiceMonitor and PodMonitor give:

* the operator's endpoint: `llmtrain.operator.metrics.OperatorMetrics` serving on loopback,
  fed the events of a job's life through its public methods (the real operator process is
  scraped in tests/cluster/test_chart_monitoring.py);
* real training drivers: `llmtrain worker` runs three short stages of the quickstart's tiny
  model (pretrain, dpo, grpo: between them every §4 metric a CPU can produce), one after
  the other on one local Ray, each serving /metrics on its own loopback port, as three rank
  0 pods would.

Each dashboard query must return data (a finite value), except the GPU ones: NVIDIA's DCGM
exporter needs GPUs, and the trainer exports llmtrain_gpu_memory_allocated_bytes only when
CUDA is present. Those are still run, so a syntax error fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

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
NAMESPACE, JOB = "team-a", "qs"
STAGES = ("pretrain", "dpo", "grpo")
STAGES_TIMEOUT = 1500  # three Ray start-ups and tiny runs; minutes on a busy 2-core box
RELEASE_NS = "llmtrain-system"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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


def _stage_configs(tmp: Path, ports: dict[str, int]) -> dict[str, Path]:
    """Three short real stages on the quickstart's tiny model: pretrain from scratch (loss,
    eval loss, checkpoints), then dpo (preference metrics) and grpo (reward, KL,
    generation/update time), both starting from the pretrained model."""
    from llmtrain.trainer.contract import StageConfig

    quick = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())["spec"]
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n"
            for line in (EXAMPLES / "quickstart/instructions.jsonl").read_text().splitlines()[:16]
        )
    )
    common = {"maxSeqLength": 64, "loggingSteps": 1, "learningRate": 1e-3}
    stages: dict[str, dict[str, Any]] = {
        "pretrain": {
            "type": "pretrain",
            "dataset": {"source": str(EXAMPLES / "quickstart/corpus.txt"), "format": "text"},
            "hyperparameters": {**common, "maxSteps": 12, "batchSize": 8, "evalSteps": 4},
        },
        "dpo": {
            "type": "dpo",
            "dataset": {
                "source": str(EXAMPLES / "quickstart/preferences.jsonl"),
                "format": "preference",
            },
            "dpo": {"beta": 0.1},
            # The preference gauges exist from the first log on and the driver stops serving
            # when training ends: 4 steps (2-3 s) were sometimes never scraped.
            "hyperparameters": {**common, "maxSteps": 16, "batchSize": 4},
        },
        "grpo": {
            "type": "grpo",
            "dataset": {"source": str(prompts), "format": "prompt-only"},
            "grpo": {
                "numGenerations": 2,
                "beta": 0.05,
                "targetLength": 8,
                "rewardFunctions": ["length-penalty"],
                "maxCompletionLength": 12,
            },
            # long enough (seconds) for the counters to be scraped more than once
            "hyperparameters": {**common, "maxSteps": 30, "batchSize": 2},
        },
    }
    model = {**quick["model"], "tokenizer": {"source": str(EXAMPLES / "quickstart/tokenizer")}}
    out = {}
    pretrained = tmp / "storage" / JOB / "pretrain" / "final"
    for name, stage in stages.items():
        cfg = StageConfig.model_validate(
            {
                "job": JOB,
                "namespace": NAMESPACE,
                "stage": {"name": name, **stage},
                "input_model": None if name == "pretrain" else str(pretrained),
                "model": model,
                "output_dir": str(tmp / "storage" / JOB / name),
                "checkpointing": {"everySteps": 4, "keep": 1},
                "metrics_port": ports[name],
            }
        )
        out[name] = tmp / f"{name}.json"
        out[name].write_text(cfg.model_dump_json(by_alias=True))
    return out


class Workers:
    """`llmtrain worker` for each stage in turn, in a thread, as a driver pod runs it."""

    def __init__(self, configs: dict[str, Path], logs: Path):
        self.configs, self.logs = configs, logs
        self.results: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from llmtrain.trainer import ray_setup

        # One Ray for the three drivers, as `llmtrain run` has (a pod's is its gang's own);
        # it exports RAY_ADDRESS and LLMTRAIN_LOCAL_RAY while it runs.
        with ray_setup.local_head(self.logs / "ray.log"):
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            self._stages(env)

    def _stages(self, env: dict[str, str]) -> None:
        for name, config in self.configs.items():
            if self._stop.is_set():
                return
            with (self.logs / f"worker-{name}.log").open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "llmtrain"),
                        "worker",
                        "--stage-config",
                        str(config),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                self.results[name] = self.proc.wait()
            if self.results[name] != 0:
                return  # later stages start from this one

    def start(self) -> None:
        self.thread.start()

    def wait(self, timeout: float) -> dict[str, int]:
        self.thread.join(timeout)
        return self.results

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # the worker checkpoints and exits on SIGTERM
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.thread.join(5)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"worker-{name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])


@pytest.mark.trainer
def test_every_dashboard_and_alert_query_runs_on_real_prometheus(
    prometheus_bin: Path, tmp_path: Path, operator_endpoint: tuple[int, Any]
) -> None:
    op_port, op_metrics = operator_endpoint
    docs = render(namespace=RELEASE_NS)
    ports = {name: free_port() for name in STAGES}
    pod_monitor = find(docs, "PodMonitor")
    drivers = [
        scrape_config_for(
            pod_monitor,
            f"127.0.0.1:{ports[name]}",
            {"namespace": NAMESPACE, "pod": f"{JOB}-{name}-a1-0"},
        )
        for name in STAGES
    ]
    driver_scrape = {
        **drivers[0],
        "static_configs": [sc for d in drivers for sc in d["static_configs"]],
    }
    scrape = [
        scrape_config_for(
            find(docs, "ServiceMonitor"),
            f"127.0.0.1:{op_port}",
            {"namespace": RELEASE_NS, "service": find(docs, "Service")["metadata"]["name"]},
        ),
        driver_scrape,
    ]
    rules = rules_file(docs, tmp_path / "rules.yaml")
    workers = Workers(_stage_configs(tmp_path, ports), tmp_path)
    start = time.time()
    with Prometheus(prometheus_bin, tmp_path, scrape, rule_files=[rules]) as prom:
        prom.wait_for_samples("llmtrain_operator_jobs")
        workers.start()
        # The rest of the job's life, while Prometheus watches: a restart, reconciles, a
        # stage that finished, a reconcile error.
        op_metrics.stage_restarts.labels(namespace=NAMESPACE, job=JOB, reason="PodFailed").inc()
        op_metrics.reconciles.labels(result="error").inc()
        op_metrics.pods_created.inc(2)
        op_metrics.stage_duration.labels(type="pretrain").observe(95.0)
        op_metrics.queued_seconds.labels(namespace=NAMESPACE, job=JOB).inc(42.0)
        op_metrics.gates(NAMESPACE, JOB, [(STAGES[0], "evalLoss", True)])
        try:
            results = workers.wait(timeout=STAGES_TIMEOUT)
        finally:
            workers.stop()
        for name in STAGES:
            assert results.get(name) == 0, f"llmtrain worker ({name}) failed:\n" + workers.tail(
                name
            )
        time.sleep(3)
        end = time.time()

        # honor_labels kept the LLMTrainingJob's labels, not the scrape job's.
        steps = prom.query_range("llmtrain_train_step", start, end)
        assert {
            (s["metric"]["job"], s["metric"]["namespace"], s["metric"]["stage"]) for s in steps
        } == {(JOB, NAMESPACE, name) for name in STAGES}
        assert {"namespace": NAMESPACE, "phase": "Running"}.items() <= prom.query(
            'llmtrain_operator_jobs{phase="Running"}'
        )[0]["metric"].items()
        # ... and the operator's per-job series keep the LLMTrainingJob's `job`.
        assert {
            (s["metric"]["job"], s["metric"]["phase"])
            for s in prom.query("llmtrain_operator_job_phase")
        } == {(JOB, "Running"), ("older", "Failed")}

        # Several stages selected, as Grafana passes a multi-value variable: a regex.
        variables = {"namespace": NAMESPACE, "job": JOB, "stage": "|".join(STAGES)}
        dash = dashboard()
        gaps, gpu_seen = dashboard_gaps(prom, dash, variables, start, end)
        assert gaps == [], "dashboard queries without data:\n" + "\n".join(gaps)
        assert gpu_seen == set(NEEDS_GPU)
        check_variables(prom, dash, variables, start, end)
        check_rules(prom, find(docs, "PrometheusRule"))
        # A Failed job exists: LLMTrainJobFailed is pending (for: 1m) or firing already,
        # and names it.
        alerts = {a["labels"]["alertname"]: a for a in prom.api("alerts")["alerts"]}
        assert alerts["LLMTrainJobFailed"]["labels"]["namespace"] == NAMESPACE
        assert alerts["LLMTrainJobFailed"]["labels"]["job"] == "older"
