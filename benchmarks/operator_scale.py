"""Operator at scale: 200 LLMTrainingJobs created at once on the real control plane.

    .venv/bin/python -m benchmarks.operator_scale [--jobs 200] [--workers 2] [--nodes 50]

Reports, per job, the time from its creation until all pods of its first stage exist
(p50/p99) and until they all run, plus the operator's peak RSS. The named baseline,
`direct-create`, is the same objects (the same builders) created straight from this
process with the same parallelism: the apiserver + kwok floor the operator stands on.
Everything runs on loopback (tests/controlplane); pods are kwok's fake pods.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmtrain.operator import api, layout, manifests  # noqa: E402
from tests.controlplane import cluster as cp  # noqa: E402


def job_body(name: str, ns: str, workers: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"source": "org/base"},
            "stages": [
                {
                    "name": "sft",
                    "type": "sft",
                    "dataset": {"source": "/storage/d.jsonl", "format": "messages"},
                }
            ],
            "resources": {
                "workers": workers,
                "gpusPerWorker": 1,
                "cpu": "1",
                "memory": "1Gi",
                "shmSize": "1Gi",
            },
        },
    }


class _Watch:
    """A watch in a daemon thread that re-watches when the stream ends (server timeouts,
    dropped streams) until stop(); subclasses give the stream and handle each object."""

    stopped = False

    def __init__(self) -> None:
        from kubernetes import watch

        self._w = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def _stream(self) -> Any:
        raise NotImplementedError

    def _on(self, obj: Any, now: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self.stopped:
            try:
                for ev in self._stream():
                    self._on(ev["object"], time.monotonic())
            except Exception:
                time.sleep(0.1)

    def stop(self) -> None:
        self.stopped = True
        self._w.stop()


class PodWatch(_Watch):
    """First time each pod was seen, and first time it was seen Running (one watch)."""

    def __init__(self, core: Any, ns: str) -> None:
        self.core, self.ns = core, ns
        self.seen: dict[str, float] = {}
        self.running: dict[str, float] = {}
        super().__init__()

    def _stream(self) -> Any:
        return self._w.stream(
            self.core.list_namespaced_pod, self.ns, timeout_seconds=0, _request_timeout=None
        )

    def _on(self, pod: Any, now: float) -> None:
        self.seen.setdefault(pod.metadata.name, now)
        if pod.status and pod.status.phase == "Running":
            self.running.setdefault(pod.metadata.name, now)


class JobWatch(_Watch):
    """First time each job carried a status written by the operator."""

    def __init__(self, custom: Any, ns: str) -> None:
        self.custom, self.ns = custom, ns
        self.status: dict[str, float] = {}
        super().__init__()

    def _stream(self) -> Any:
        return self._w.stream(
            self.custom.list_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            self.ns,
            api.PLURAL,
            timeout_seconds=0,
        )

    def _on(self, obj: Any, now: float) -> None:
        if (obj.get("status") or {}).get("currentStage"):
            self.status.setdefault(obj["metadata"]["name"], now)


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
    return {"p50": round(q[49], 3), "p99": round(q[98], 3), "max": round(xs[-1], 3)}


def per_job(created: dict[str, float], seen: dict[str, float], workers: int) -> list[float]:
    out = []
    for job, t0 in created.items():
        pods = [seen.get(layout.pod_name(job, "sft", 1, r)) for r in range(workers)]
        if all(t is not None for t in pods):
            out.append(max(t for t in pods if t is not None) - t0)
    return out


def wait(what: str, check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    print(f"  timed out waiting for {what}", file=sys.stderr)
    return False


def run_operator_round(
    c: Any,
    core: Any,
    custom: Any,
    n: int,
    workers: int,
    threads: int,
    workdir: Path,
    extra: list[str],
) -> dict[str, Any]:
    ns = "bench-operator"
    c.create_namespace(ns)
    log = (workdir / "operator.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env.update(KUBECONFIG=str(c.kubeconfig), NO_PROXY="*", no_proxy="*")
    op = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "llmtrain"),
            "operator",
            "--all-namespaces",
            "--standalone",
            "--metrics-bind",
            "",
            "--health-bind",
            "127.0.0.1:0",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    time.sleep(4)  # startup: imports, CRD scan, first (empty) listings
    rss0 = _rss(op.pid)
    pods = PodWatch(core, ns)
    jobs = JobWatch(custom, ns)
    created: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"job-{i:04d}"
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL, job_body(name, ns, workers)
        )
        created[name] = t0

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(n)))
    submitted = time.monotonic() - start
    wait("all operator pods", lambda: len(pods.seen) >= n * workers, 300)
    wait("all operator pods running", lambda: len(pods.running) >= n * workers, 300)
    time.sleep(5)  # a resync or two at steady state, for the RSS peak
    peak = _peak_rss(op.pid)
    pods.stop()
    jobs.stop()
    os.killpg(op.pid, signal.SIGTERM)
    op.wait(30)
    return {
        "submit_seconds": round(submitted, 2),
        "first_status_write": percentiles(
            [jobs.status[j] - t for j, t in created.items() if j in jobs.status]
        ),
        "pods_exist": percentiles(per_job(created, pods.seen, workers)),
        "pods_running": percentiles(per_job(created, pods.running, workers)),
        "jobs_complete": len(per_job(created, pods.seen, workers)),
        "operator_rss_start_mib": rss0,
        "operator_peak_rss_mib": peak,
    }


def run_baseline_round(c: Any, core: Any, n: int, workers: int, threads: int) -> dict[str, Any]:
    """The same ConfigMap, Service and pods per job, created directly (no operator)."""
    ns = "bench-direct"
    c.create_namespace(ns)
    pods = PodWatch(core, ns)
    created: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"job-{i:04d}"
        job = api.parse_job(job_body(name, ns, workers))
        t0 = time.monotonic()
        created[name] = t0
        for obj in manifests.build_stage_objects(job, "sft", 1):
            kind = obj["kind"]
            # Not ours to reconcile: the operator round must not see these pods.
            obj["metadata"]["labels"]["bench.llmtrain.io/job"] = obj["metadata"]["labels"].pop(
                layout.LABEL_JOB
            )
            fn = {
                "ConfigMap": core.create_namespaced_config_map,
                "Service": core.create_namespaced_service,
                "Pod": core.create_namespaced_pod,
            }[kind]
            fn(ns, obj, _preload_content=False)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(n)))
    wait("all direct pods", lambda: len(pods.seen) >= n * workers, 300)
    wait("all direct pods running", lambda: len(pods.running) >= n * workers, 300)
    pods.stop()
    # Free the fake GPUs for the operator round.
    c.kubectl("delete", "namespace", ns, "--wait=true", timeout=300)
    return {
        "pods_exist": percentiles(per_job(created, pods.seen, workers)),
        "pods_running": percentiles(per_job(created, pods.running, workers)),
    }


def _rss(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def _peak_rss(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def _status_kib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(float(line.split()[1]), 1)
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="pods per job")
    ap.add_argument("--nodes", type=int, default=60, help="kwok nodes (8 GPUs each)")
    ap.add_argument("--threads", type=int, default=16, help="parallel creates, both rounds")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="extra `llmtrain operator` argument (repeatable), e.g. --verbose",
    )
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="llmtrain-bench-"))
    print(
        f"building/starting control plane ({args.nodes} kwok nodes) in {workdir} ...",
        file=sys.stderr,
    )
    with cp.Cluster(cp.build(), workdir, nodes=args.nodes) as c:
        c.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "llmtrainingjobs.yaml"))
        wait(
            "CRD established",
            lambda: (
                "True"
                in c.kubectl(
                    "get",
                    "crd",
                    "llmtrainingjobs.llmtrain.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                    check=False,
                )
            ),
            60,
        )
        client = c.api_client()
        from kubernetes import client as k

        core, custom = k.CoreV1Api(client), k.CustomObjectsApi(client)
        baseline: dict[str, Any] = {}
        if not args.skip_baseline:
            print("baseline: direct-create ...", file=sys.stderr)
            baseline = run_baseline_round(c, core, args.jobs, args.workers, args.threads)
        print("operator ...", file=sys.stderr)
        operator = run_operator_round(
            c, core, custom, args.jobs, args.workers, args.threads, workdir, args.operator_arg
        )
    report = {
        "jobs": args.jobs,
        "pods_per_job": args.workers,
        "kwok_nodes": args.nodes,
        "cpus": os.cpu_count(),
        "baseline_direct_create": baseline,
        "operator": operator,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
