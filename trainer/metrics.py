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

    monitor = Monitor(cfg, stage_dir, queue)   # driver: serves cfg.metrics_port when set
    monitor.start(); ...; monitor.stop()
    callbacks = [ReportCallback(queue)]        # worker
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from llmtrain.trainer.config import StageConfig

log = logging.getLogger(__name__)

# metric -> help text: docs/contracts.md §4.
GAUGES = {
    "llmtrain_train_step": "Optimizer steps done.",
    "llmtrain_train_total_steps": "Optimizer steps planned.",
    "llmtrain_train_loss": "Latest training loss.",
    "llmtrain_eval_loss": "Latest evaluation loss.",
    "llmtrain_learning_rate": "Current learning rate.",
    "llmtrain_grad_norm": "Latest gradient norm.",
    "llmtrain_tokens_per_second": "Recent throughput in tokens per second.",
    "llmtrain_epoch": "Fractional epoch.",
    "llmtrain_eta_seconds": "Estimated seconds left.",
    "llmtrain_stage_start_time_seconds": "Unix time the stage started.",
    "llmtrain_checkpoint_step": "Step of the newest complete checkpoint.",
    "llmtrain_overfitting": "1 while eval loss rises as train loss falls.",
    "llmtrain_reward_mean": "Mean reward (alignment stages).",
    "llmtrain_reward_std": "Reward standard deviation (alignment stages).",
    "llmtrain_kl": "KL divergence to the reference policy.",
    "llmtrain_preference_margin": "Chosen minus rejected reward (dpo, reward).",
    "llmtrain_preference_accuracy": "Fraction of pairs ranked correctly (dpo, reward).",
}
COUNTERS = {
    "llmtrain_tokens": "Tokens processed.",
    "llmtrain_samples": "Samples processed.",
    "llmtrain_generation_seconds": "Seconds spent generating (ppo, grpo).",
    "llmtrain_update_seconds": "Seconds spent updating the policy (ppo, grpo).",
}
# Metrics of the alignment stages: exported only once a stage logs them.
ALIGNMENT_PREFIXES = ("llmtrain_reward", "llmtrain_kl", "llmtrain_preference")
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
    "llmtrain_checkpoint_step",
    "llmtrain_overfitting",
    "llmtrain_stage_start_time_seconds",
]
# HF/TRL log key -> gauge. Alignment stages may log any of these names.
LOG_KEYS = {
    "loss": "llmtrain_train_loss",
    "eval_loss": "llmtrain_eval_loss",
    "learning_rate": "llmtrain_learning_rate",
    "grad_norm": "llmtrain_grad_norm",
    "epoch": "llmtrain_epoch",
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
}
# Cumulative values in the logs -> counter (incremented by the difference).
CUMULATIVE = {
    "num_input_tokens_seen": "llmtrain_tokens",
    "samples_seen": "llmtrain_samples",
    "generation_seconds": "llmtrain_generation_seconds",
    "update_seconds": "llmtrain_update_seconds",
}
# Alignment metrics that progress.json carries too (named without the prefix), when logged.
ALIGNMENT = {
    "llmtrain_reward_mean",
    "llmtrain_reward_std",
    "llmtrain_kl",
    "llmtrain_preference_margin",
    "llmtrain_preference_accuracy",
    "llmtrain_generation_seconds",
    "llmtrain_update_seconds",
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
    """The contract's Prometheus metrics for one stage, in their own registry."""

    def __init__(self, cfg: StageConfig) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"namespace": cfg.namespace, "job": cfg.job, "stage": cfg.stage.name}
        names = list(self.labels)
        self.gauges = {n: Gauge(n, h, names, registry=self.registry) for n, h in GAUGES.items()}
        self.counters = {
            n: Counter(n, h, names, registry=self.registry) for n, h in COUNTERS.items()
        }
        self.gpu_memory = Gauge(
            "llmtrain_gpu_memory_allocated_bytes",
            "GPU memory allocated by torch, per rank.",
            [*names, "rank"],
            registry=self.registry,
        )
        self._last: dict[str, float] = {}
        # The metrics of every stage exist from the first scrape; values not known yet are NaN
        # (a loss of 0 would look perfect). Alignment metrics appear once a stage logs them.
        for name in UNKNOWN_UNTIL_LOGGED:
            self.set(name, math.nan)
        for name in STARTS_AT_ZERO:
            self.set(name, 0)
        for counter in ("llmtrain_tokens", "llmtrain_samples"):
            self.counters[counter].labels(**self.labels)
        self.server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        self.server, _ = start_http_server(port, addr=addr, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def set(self, name: str, value: float) -> None:
        self.gauges[name].labels(**self.labels).set(value)

    def total(self, name: str, value: float) -> None:
        """Advance counter `name` to the cumulative `value` (never backwards)."""
        delta = value - self._last.get(name, 0.0)
        if delta > 0:
            self.counters[name].labels(**self.labels).inc(delta)
            self._last[name] = value

    def gpu(self, rank: int, value: float) -> None:
        self.gpu_memory.labels(**self.labels, rank=str(rank)).set(value)


class Monitor:
    """Driver side: drains the workers' queue into metrics, progress.json and metrics.jsonl."""

    def __init__(self, cfg: StageConfig, stage_dir: Path, queue: Any, interval: float = 1.0):
        self.cfg, self.dir, self.queue, self.interval = cfg, stage_dir, queue, interval
        self.metrics = StageMetrics(cfg)
        self.history: list[dict[str, Any]] = []
        self.progress: dict[str, Any] = {"step": 0, "total_steps": 0, "loss": None}
        self.progress.update(eval_loss=None, tokens_per_second=None, eta_seconds=None, epoch=0.0)
        self.result: dict[str, Any] = {}
        self.overfitting = False
        self._begin: tuple[float, int] | None = None
        self._tokens: tuple[float, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmtrain-monitor", daemon=True)

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
        kind, m = r.pop("kind"), self.metrics
        if kind == "gpu":
            m.gpu(r["rank"], r["bytes"])
            return
        if kind == "checkpoint":
            m.set("llmtrain_checkpoint_step", r["step"])
            return
        if kind == "end":
            self.result = r
            return
        step, total = r.get("step", 0), r.get("total_steps", 0)
        self.progress.update(step=step, total_steps=total, epoch=r.get("epoch", 0.0))
        m.set("llmtrain_train_step", step)
        m.set("llmtrain_train_total_steps", total)
        if kind == "begin":
            self._begin = (r["time"], step)
            self._tokens = (r["time"], r.get("num_input_tokens_seen", 0))
            return
        logs = {k: v for k, v in r.items() if isinstance(v, int | float)}
        self.history.append(logs)
        with (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(logs) + "\n")
        for key, name in LOG_KEYS.items():
            if key in logs:
                m.set(name, logs[key])
                if name in ALIGNMENT:
                    self.progress[name.removeprefix("llmtrain_")] = logs[key]
        for key, name in CUMULATIVE.items():
            if key in logs:
                m.total(name, logs[key])
                if name in ALIGNMENT:
                    self.progress[name.removeprefix("llmtrain_")] = logs[key]
        if "loss" in logs:
            self.progress["loss"] = logs["loss"]
        if "eval_loss" in logs:
            self.progress["eval_loss"] = logs["eval_loss"]
            self._check_overfitting()
        self._throughput(r["time"], step, total, logs.get("num_input_tokens_seen"))

    def _throughput(self, now: float, step: int, total: int, tokens: float | None) -> None:
        if tokens is not None and self._tokens and now > self._tokens[0]:
            if tokens > self._tokens[1]:
                rate = (tokens - self._tokens[1]) / (now - self._tokens[0])
                self.progress["tokens_per_second"] = rate
                self.metrics.set("llmtrain_tokens_per_second", rate)
                self._tokens = (now, tokens)
        if self._begin and step > self._begin[1] and total:
            per_step = (now - self._begin[0]) / (step - self._begin[1])
            eta = max(0.0, (total - step) * per_step)
            self.progress["eta_seconds"] = eta
            self.metrics.set("llmtrain_eta_seconds", eta)

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
        write_json(self.dir / "progress.json", {**self.progress, "updated_at": time.time()})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: readers (the operator, a user's `cat`) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
