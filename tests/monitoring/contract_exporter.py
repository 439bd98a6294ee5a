"""A stand-in training driver: serves the docs/contracts.md §4 metrics while it "trains".

    python tests/monitoring/contract_exporter.py --host 127.100.0.7 --port 9400 \
        --namespace ns --job j --stage s

tests/cluster/test_chart_monitoring.py binds it to a kwok pod's IP (loopback) as the head
pod's driver: that test is about the operator under the chart's RBAC, and a real training
run there would add minutes without testing anything new. Real `llmtrain worker` runs feed
Prometheus in tests/monitoring/test_prometheus.py. It serves every §4 metric except
`llmtrain_gpu_memory_allocated_bytes` (CUDA only), advances one step every
`--step-seconds`, then keeps serving for `--linger` seconds, as a driver does before it exits.
"""

from __future__ import annotations

import argparse
import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="Address to serve on (a kwok pod IP).")
    p.add_argument("--namespace", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-seconds", type=float, default=0.25)
    p.add_argument("--linger", type=float, default=600)
    args = p.parse_args()

    reg = CollectorRegistry()
    labels = {"namespace": args.namespace, "job": args.job, "stage": args.stage}
    names = list(labels)

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, names, registry=reg)

    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, names, registry=reg)

    g = {
        n: gauge(n, n)
        for n in (
            "llmtrain_train_step",
            "llmtrain_train_total_steps",
            "llmtrain_train_loss",
            "llmtrain_eval_loss",
            "llmtrain_learning_rate",
            "llmtrain_grad_norm",
            "llmtrain_tokens_per_second",
            "llmtrain_epoch",
            "llmtrain_eta_seconds",
            "llmtrain_stage_start_time_seconds",
            "llmtrain_checkpoint_step",
            "llmtrain_overfitting",
            "llmtrain_reward_mean",
            "llmtrain_reward_std",
            "llmtrain_kl",
            "llmtrain_preference_margin",
            "llmtrain_preference_accuracy",
        )
    }
    c = {
        n.removesuffix("_total"): counter(n.removesuffix("_total"), n)
        for n in (
            "llmtrain_tokens_total",
            "llmtrain_samples_total",
            "llmtrain_generation_seconds_total",
            "llmtrain_update_seconds_total",
        )
    }
    start_http_server(args.port, addr=args.host, registry=reg)

    g["llmtrain_train_total_steps"].labels(**labels).set(args.steps)
    g["llmtrain_stage_start_time_seconds"].labels(**labels).set(time.time())
    for step in range(1, args.steps + 1):
        time.sleep(args.step_seconds)
        loss = 3.0 * math.exp(-step / 15) + 0.5
        for name, value in {
            "llmtrain_train_step": step,
            "llmtrain_train_loss": loss,
            "llmtrain_eval_loss": loss + 0.1,
            "llmtrain_learning_rate": 1e-3 * (1 - step / 50),
            "llmtrain_grad_norm": 1.0 / step,
            "llmtrain_tokens_per_second": 2048.0,
            "llmtrain_epoch": step / 20,
            "llmtrain_eta_seconds": (args.steps - step) * 0.25,
            "llmtrain_overfitting": 0,
            "llmtrain_reward_mean": 0.1 * step,
            "llmtrain_reward_std": 0.5,
            "llmtrain_kl": 0.01 * step,
            "llmtrain_preference_margin": 0.05 * step,
            "llmtrain_preference_accuracy": min(1.0, 0.5 + step / 80),
        }.items():
            g[name].labels(**labels).set(value)
        if step % 10 == 0:
            g["llmtrain_checkpoint_step"].labels(**labels).set(step)
        c["llmtrain_tokens"].labels(**labels).inc(512)
        c["llmtrain_samples"].labels(**labels).inc(4)
        c["llmtrain_generation_seconds"].labels(**labels).inc(args.step_seconds * 0.6)
        c["llmtrain_update_seconds"].labels(**labels).inc(args.step_seconds * 0.4)
    time.sleep(args.linger)


if __name__ == "__main__":
    main()
