"""Training metrics: from the Ray Train workers to the driver's /metrics, progress.json and
metrics.jsonl.

How numbers reach the driver. The HF/TRL trainer runs inside Ray Train worker processes, while
Prometheus scrapes the driver (`llmtrain worker`). The driver creates a `ray.util.queue.Queue`
(a tiny Ray actor) and hands it to the workers; `ReportCallback`, a TrainerCallback on rank 0,
puts one small dict per log/eval/save event into it (and every rank its GPU memory). A driver
thread (`Monitor`) drains the queue once a second and updates the Prometheus gauges, writes
`progress.json` (atomically) and appends to `metrics.jsonl`. This works on one machine and
across pods alike, needs no shared filesystem for metrics, and a lost record only delays a
gauge. (`ray.train.report` was the other option, but Ray Train v2 delivers reports to its
controller actor, not to the driver process.)

The metrics themselves (names, types, help, the progress field each one feeds) are the
contract's table, `contract.DRIVER_METRICS`; this module maps the trainers' log keys onto them.

    monitor = Monitor(cfg, stage_dir, queue)   # driver: serves cfg.metrics_port when set
    monitor.start(); ...; monitor.stop()
    callbacks = [ReportCallback(queue, rank)]  # worker (loop.py)
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from llmtrain.trainer.contract import (
    CHECKPOINT_STEP_METRIC,
    DRIVER_METRICS,
    LABELS,
    METRIC,
    METRICS,
    PROGRESS,
    Progress,
    StageConfig,
    write_json,
)

log = logging.getLogger(__name__)

# What a scrape shows before the first log: every non-alignment metric exists from the start,
# NaN while unknown (a loss of 0 would look perfect); alignment metrics appear once logged.
UNKNOWN_UNTIL_LOGGED = [
    "llmtrain_train_loss",
    "llmtrain_eval_loss",
    "llmtrain_learning_rate",
    "llmtrain_grad_norm",
    "llmtrain_tokens_per_second",
    "llmtrain_eta_seconds",
]
STARTS_AT_ZERO = [
    "llmtrain_train_step",
    "llmtrain_train_total_steps",
    "llmtrain_epoch",
    CHECKPOINT_STEP_METRIC,
    "llmtrain_overfitting",
    "llmtrain_stage_start_time_seconds",
    "llmtrain_tokens_total",
    "llmtrain_samples_total",
]
# HF/TRL log key -> metric. Alignment stages may log any of these names. (Step, total steps
# and epoch come with every record.)
LOG_KEYS = {
    "loss": "llmtrain_train_loss",
    "eval_loss": "llmtrain_eval_loss",
    "learning_rate": "llmtrain_learning_rate",
    "grad_norm": "llmtrain_grad_norm",
    "reward": "llmtrain_reward_mean",
    "reward_std": "llmtrain_reward_std",
    "objective/scores": "llmtrain_reward_mean",
    "kl": "llmtrain_kl",
    "objective/kl": "llmtrain_kl",
    "rewards/margins": "llmtrain_preference_margin",
    "rewards/accuracies": "llmtrain_preference_accuracy",
    "accuracy": "llmtrain_preference_accuracy",
    "eval_accuracy": "llmtrain_preference_accuracy",
    "margin": "llmtrain_preference_margin",  # TRL's RewardTrainer
    "mean_reward": "llmtrain_reward_mean",  # TRL's RewardTrainer
    # Cumulative values -> counters (advanced by the difference).
    "num_input_tokens_seen": "llmtrain_tokens_total",
    "samples_seen": "llmtrain_samples_total",
    "generation_seconds": "llmtrain_generation_seconds_total",
    "update_seconds": "llmtrain_update_seconds_total",
}


def is_overfitting(history: list[dict[str, Any]]) -> bool:
    """Eval loss rose between the last two evaluations while the train loss fell."""
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    if len(evals) < 2:
        return False
    (s1, e1), (s2, e2) = evals[-2:]

    def train_at(step: int) -> float | None:
        losses = [r["loss"] for r in history if "loss" in r and r["step"] <= step]
        return losses[-1] if losses else None

    t1, t2 = train_at(s1), train_at(s2)
    return e2 > e1 and t1 is not None and t2 is not None and t2 < t1


class StageMetrics:
    """The contract's metrics (contract.DRIVER_METRICS) for one stage, in their own registry."""

    def __init__(self, cfg: StageConfig) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"namespace": cfg.namespace, "job": cfg.job, "stage": cfg.stage.name}
        self.families: dict[str, Any] = {}
        for m in DRIVER_METRICS:
            kind = Counter if m.type == "counter" else Gauge
            names = [*LABELS, "rank"] if m.per_rank else list(LABELS)
            self.families[m.name] = kind(m.name, m.help, names, registry=self.registry)
        self._last: dict[str, float] = {}
        for name in UNKNOWN_UNTIL_LOGGED:
            self.set(name, math.nan)
        for name in STARTS_AT_ZERO:
            self.set(name, 0)
        self.server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        self.server, _ = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge's value, or a counter's cumulative value (it only advances by the
        difference, never backwards; 0 makes the series exist)."""
        series = self.families[name].labels(**self.labels, **labels)
        if METRIC[name].type == "gauge":
            series.set(value)
            return
        delta = value - self._last.get(name, 0.0)
        if delta > 0:
            series.inc(delta)
            self._last[name] = value


class Monitor:
    """Driver side: drains the workers' queue into metrics, progress.json and metrics.jsonl."""

    def __init__(self, cfg: StageConfig, stage_dir: Path, queue: Any, interval: float = 1.0):
        self.cfg, self.dir, self.queue, self.interval = cfg, stage_dir, queue, interval
        self.metrics = StageMetrics(cfg)
        self.history: list[dict[str, Any]] = []
        # progress.json: the Progress fields, plus the alignment ones once logged.
        self.progress: dict[str, Any] = Progress().model_dump()
        self.result: dict[str, Any] = {}
        self.overfitting = False
        self._begin: tuple[float, int] | None = None
        self._tokens: tuple[float, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmtrain-monitor", daemon=True)

    def _set(self, name: str, value: float) -> None:
        """A metric and the progress field it feeds (contract.DRIVER_METRICS)."""
        self.metrics.set(name, value)
        field = METRIC[name].progress
        if field is not None:
            self.progress[field] = value

    def start(self) -> None:
        self.metrics.set("llmtrain_stage_start_time_seconds", time.time())
        if self.cfg.metrics_port is not None:
            self.metrics.serve(self.cfg.metrics_port)
            log.info("metrics on :%d/metrics", self.cfg.metrics_port)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.drain()
        self.metrics.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.drain()
            except Exception:  # the queue actor may be gone at shutdown; never kill training
                log.debug("monitor drain failed", exc_info=True)

    def drain(self) -> None:
        n = self.queue.qsize()
        records = self.queue.get_nowait_batch(n) if n else []
        for record in records:
            self.apply(record)
        if records:
            self._write_progress()

    def apply(self, r: dict[str, Any]) -> None:
        kind = r.pop("kind")
        if kind == "gpu":
            self.metrics.set("llmtrain_gpu_memory_allocated_bytes", r["bytes"], rank=str(r["rank"]))
            return
        if kind == "checkpoint":
            self.metrics.set(CHECKPOINT_STEP_METRIC, r["step"])
            return
        if kind == "end":
            self.result = r
            return
        step, total = r.get("step", 0), r.get("total_steps", 0)
        self._set("llmtrain_train_step", step)
        self._set("llmtrain_train_total_steps", total)
        self._set("llmtrain_epoch", r.get("epoch", 0.0))
        if kind == "begin":
            self._begin = (r["time"], step)
            self._tokens = (r["time"], r.get("num_input_tokens_seen", 0))
            return
        logs = {k: v for k, v in r.items() if isinstance(v, int | float)}
        self.history.append(logs)
        with (self.dir / METRICS).open("a") as f:
            f.write(json.dumps(logs) + "\n")
        for key, name in LOG_KEYS.items():
            if key in logs:
                self._set(name, logs[key])
        if "eval_loss" in logs:
            self._check_overfitting()
        self._throughput(r["time"], step, total, logs.get("num_input_tokens_seen"))

    def _throughput(self, now: float, step: int, total: int, tokens: float | None) -> None:
        if tokens is not None and self._tokens and now > self._tokens[0]:
            if tokens > self._tokens[1]:
                rate = (tokens - self._tokens[1]) / (now - self._tokens[0])
                self._set("llmtrain_tokens_per_second", rate)
                self._tokens = (now, tokens)
        if self._begin and step > self._begin[1] and total:
            per_step = (now - self._begin[0]) / (step - self._begin[1])
            self._set("llmtrain_eta_seconds", max(0.0, (total - step) * per_step))

    def _check_overfitting(self) -> None:
        now = is_overfitting(self.history)
        if now and not self.overfitting:
            log.warning(
                "possible overfitting at step %s: eval loss rose to %.4f while train loss fell",
                self.progress["step"],
                self.progress["eval_loss"],
            )
        self.overfitting = now
        self.metrics.set("llmtrain_overfitting", int(now))

    def _write_progress(self) -> None:
        write_json(self.dir / PROGRESS, {**self.progress, "updated_at": time.time()})
