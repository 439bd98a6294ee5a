"""Operator at scale: LLMTrainingJobs against the same pods created directly, in one run.

    .venv/bin/python -m benchmarks operator                      # 200 jobs: a burst, then 20/s
    .venv/bin/python -m benchmarks.operator_scale --jobs 1000 --rate 0 [--profile]
    .venv/bin/python -m benchmarks.operator_scale --rate 20 --operator-arg=--verbose

Each scenario (`--rate 0`: all jobs as one burst; `--rate R`: R jobs/s) runs twice on the
real control plane (tests/controlplane, kwok pods, loopback only): first the baseline,
`direct`, which creates each job's ConfigMap, Service and pods (the operator's own builders)
straight from this process; then `operator`, which creates the LLMTrainingJobs at the
same times and lets a fresh `llmtrain operator` create the rest. Both sides submit through
the same pool of `--threads`. A job's clock starts when it was due to be submitted, so a
side that cannot keep up pays for its queue. Reported per side: p50/p99 from submission to
all of a job's pods existing (and Running), wall time from the first submission to the
last pod, pods/s over that wall time; for the operator its RSS when idle and its VmHWM.
The ratios (operator/direct, same run) are the last lines. Absolute numbers depend on
whatever else the machine runs; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmtrain.operator import api, layout, manifests  # noqa: E402
from tests.cluster.operator_tests import harness  # noqa: E402
from tests.controlplane import cluster as cp  # noqa: E402

GOALS = {"burst_wall": 1.1, "steady_p99": 1.5, "throughput": 0.9, "pods_per_s": 50, "rss": 100}


def job_body(name: str, ns: str, workers: int) -> dict[str, Any]:
    # No GPUs and a small CPU request: 1,000 jobs' pods fit on 60 kwok nodes (110 pods each).
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
            "storage": {"pvc": {"claimName": harness.STORAGE_CLAIM}},
            "resources": {
                "workers": workers,
                "gpusPerWorker": 0,
                "cpu": "100m",
                "memory": "1Gi",
                "shmSize": "1Gi",
            },
        },
    }


class PodWatch:
    """First time each pod of `ns` was seen, and first time Running. Plain JSON, no client
    models, so this process costs both sides little CPU; re-watches until stop()."""

    def __init__(self, core: Any, ns: str) -> None:
        from kubernetes import watch

        self.core, self.ns, self.stopped = core, ns, False
        self.seen: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._w = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                for ev in self._w.stream(
                    self.core.list_namespaced_pod,
                    self.ns,
                    timeout_seconds=0,
                    _request_timeout=None,
                    deserialize=False,
                ):
                    now, pod = time.monotonic(), ev["object"]
                    name = pod["metadata"]["name"]
                    self.seen.setdefault(name, now)
                    if (pod.get("status") or {}).get("phase") == "Running":
                        self.running.setdefault(name, now)
            except Exception:
                time.sleep(0.1)

    def stop(self) -> None:
        self.stopped = True
        self._w.stop()


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


def wait(what: str, check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    print(f"  timed out waiting for {what}", file=sys.stderr)
    return False


def submit(
    n: int, rate: float, threads: int, create: Callable[[str], None]
) -> tuple[float, dict[str, float], float]:
    """Create jobs 0..n-1 through a pool: all at once (rate 0) or `rate` per second.
    Returns the start, each job's due time, and how long until the last create returned."""
    start = time.monotonic()
    due = {f"job-{i:04d}": start + (i / rate if rate else 0.0) for i in range(n)}
    with ThreadPoolExecutor(threads) as pool:
        futures = []
        for name, t in due.items():
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(create, name))
        for f in futures:
            f.result()
    return start, due, time.monotonic() - start


def summary(
    start: float, due: dict[str, float], submitted: float, pods: PodWatch, workers: int
) -> dict[str, Any]:
    seen = list(pods.seen.values())
    wall = max(seen) - start if seen else float("nan")
    return {
        "submit_seconds": round(submitted, 2),
        "pods_exist": percentiles(per_job(due, pods.seen, workers)),
        "pods_running": percentiles(per_job(due, pods.running, workers)),
        "jobs_complete": len(per_job(due, pods.seen, workers)),
        "wall_to_last_pod_seconds": round(wall, 2),
        "pods_per_second": round(len(seen) / wall, 1) if seen else 0.0,
    }


def run_direct(c: Any, core: Any, ns: str, n: int, workers: int, rate: float, threads: int) -> Any:
    """The same ConfigMap, Service and pods per job, created straight from here."""
    c.create_namespace(ns)
    harness.bound_claim(c, ns)  # a gang of two pods needs storage they all mount
    pods = PodWatch(core, ns)
    fns = {
        "ConfigMap": core.create_namespaced_config_map,
        "Service": core.create_namespaced_service,
        "Pod": core.create_namespaced_pod,
    }

    def create(name: str) -> None:
        job = api.parse_job(job_body(name, ns, workers))
        for obj in manifests.build_stage_objects(job, "sft", 1):
            # Not ours to reconcile: an operator must not take these pods for its own.
            labels = obj["metadata"]["labels"]
            labels["bench.llmtrain.io/job"] = labels.pop(layout.LABEL_JOB)
            selector = obj.get("spec", {}).get("selector")  # the Service still selects them
            if isinstance(selector, dict) and layout.LABEL_JOB in selector:
                selector["bench.llmtrain.io/job"] = selector.pop(layout.LABEL_JOB)
            fns[obj["kind"]](ns, obj, _preload_content=False)

    load = ApiserverLoad(c)
    start, due, submitted = submit(n, rate, threads, create)
    wait("all direct pods", lambda: len(pods.seen) >= n * workers, 600)
    wait("all direct pods running", lambda: len(pods.running) >= n * workers, 300)
    pods.stop()
    return summary(start, due, submitted, pods, workers) | load.done()


# The operator image installs no kubernetes client (here a test dependency, pyproject.toml), and
# kopf imports it whenever it can (30 MiB): hidden, the operator runs as it does in its image.
AS_IN_IMAGE = (
    "import runpy, sys; sys.modules['kubernetes'] = None; sys.argv = sys.argv[1:];"
    " runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def _kubeconfig_env(c: Any) -> dict[str, str]:
    """This environment, pointed at the test control plane only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    return {**env, "KUBECONFIG": str(c.kubeconfig)}


def start_operator(
    c: Any, workdir: Path, ns: str, extra: list[str], traced: bool
) -> subprocess.Popen[bytes]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**_kubeconfig_env(c), "NO_PROXY": "*", "no_proxy": "*"}
    argv = [sys.executable, "-c", AS_IN_IMAGE, "llmtrain.cli.main", "operator", "--namespace", ns]
    if traced:  # the same, under tracemalloc (benchmarks/traced.py)
        prefix = str(workdir / f"tracemalloc-{ns}")
        argv[3:4] = ["benchmarks.traced", prefix]
    argv += ["--standalone", "--metrics-bind", "", "--health-bind", f"127.0.0.1:{port}"]
    # No initializer pod: the direct side creates none, and kwok would never finish one.
    argv += ["--no-initializer", *extra]
    log = (workdir / f"operator-{ns}.log").open("wb")
    op = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    wait("operator healthy", healthy, 300 if traced else 60)
    time.sleep(1)  # its first (empty) listings
    return op


def run_operator(
    c: Any,
    core: Any,
    custom: Any,
    ns: str,
    n: int,
    workers: int,
    rate: float,
    threads: int,
    workdir: Path,
    extra: list[str],
    profile: bool,
    traced: bool,
) -> dict[str, Any]:
    c.create_namespace(ns)
    harness.bound_claim(c, ns)  # a gang of two pods needs storage they all mount
    op = start_operator(c, workdir, ns, extra, traced)
    spy = None
    try:
        rss0, cpu0 = _status_mib(op.pid, "VmRSS"), _cpu_seconds(op.pid)
        spy = _py_spy(op.pid, workdir / f"profile-{ns}.txt") if profile else None
        pods = PodWatch(core, ns)
        if traced:
            op.send_signal(signal.SIGUSR1)  # snapshot 1: idle

        def create(name: str) -> None:
            body = job_body(name, ns, workers)
            custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL, body, _preload_content=False
            )

        load = ApiserverLoad(c)
        start, due, submitted = submit(n, rate, threads, create)
        wait("all operator pods", lambda: len(pods.seen) >= n * workers, 600)
        wait("all operator pods running", lambda: len(pods.running) >= n * workers, 300)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        time.sleep(3)  # a resync at steady state, for the peak
        if traced:
            op.send_signal(signal.SIGUSR1)  # snapshot 2: all jobs running
            time.sleep(10)
        out = summary(start, due, submitted, pods, workers) | load.done()
        out["operator_rss_idle_mib"] = rss0
        out["operator_vmhwm_mib"] = _status_mib(op.pid, "VmHWM")
        out["operator_cpu_seconds"] = round(_cpu_seconds(op.pid) - cpu0, 1)
        pods.stop()
    finally:
        for p in (spy, op):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:  # e.g. slowed down by tracemalloc
                    p.kill()
                    p.wait()
    # Without the operator its finalizers stay: release them.
    cleanup = [str(Path(sys.executable).parent / "llmtrain"), "cleanup", "--namespace", ns]
    subprocess.run(cleanup, env=_kubeconfig_env(c), stdout=subprocess.DEVNULL, check=True)
    c.kubectl("delete", "namespace", ns, "--wait=true", timeout=600, check=False)
    for snap in sorted(workdir.glob(f"tracemalloc-{ns}.*.txt")):
        print(f"{snap}:\n{snap.read_text()}", file=sys.stderr)
    if spy is not None:
        out["profile"] = str(workdir / f"profile-{ns}.top.txt")
        print(top_frames(workdir / f"profile-{ns}.txt"), file=sys.stderr)
    return out


def _py_spy(pid: int, raw: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("  py-spy not installed (pip install -e .[test]); no profile", file=sys.stderr)
        return None
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
    argv += ["--nonblocking", "--output", str(raw)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return spy


def top_frames(raw: Path, k: int = 15) -> str:
    """The profile's top frames by own samples and by inclusive samples, as text."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # a frame name can hold newlines (py-spy prints it as it is)
        frames, n = stack.split(";"), int(count)
        total += n
        own[_short(frames[-1])] += n
        for f in {_short(f) for f in frames} - _PLUMBING:
            incl[f] += n
    lines = [f"profile {raw}: {total} samples"]
    for title, counter in (("own", own), ("inclusive", incl)):
        lines.append(f"  top {k} by {title} samples:")
        for f, n in counter.most_common(k):
            lines.append(f"    {100 * n / max(total, 1):5.1f}%  {f}")
    text = "\n".join(lines)
    raw.with_suffix(".top.txt").write_text(text + "\n")
    return text


# Frames on nearly every stack (the event loop, threads, the CLI): they say nothing.
_PLUMBING = {
    "_bootstrap (threading.py)",
    "_bootstrap_inner (threading.py)",
    "run (threading.py)",
    "_worker (concurrent/futures/thread.py)",
    "run (asyncio/runners.py)",
    "run_until_complete (asyncio/base_events.py)",
    "run_forever (asyncio/base_events.py)",
    "_run_once (asyncio/base_events.py)",
    "_run (asyncio/events.py)",
    "<module> (llmtrain)",
    "main (cli/main.py)",
    "operator (cli/main.py)",
    "run (operator/main.py)",
    "run (main.py)",
} | {
    f"{fn} (typer/{m})"
    for fn in ("__call__", "main", "_main", "invoke", "wrapper")
    for m in ("main.py", "core.py", "_click/core.py")
}


def _short(frame: str) -> str:
    """`fn (/long/path/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py)`."""
    fn, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{fn} ({path})"


class ApiserverLoad:
    """What a round cost the control plane: the apiserver's writes by verb and resource
    (its apiserver_request_total) and the CPU seconds of apiserver + etcd."""

    WRITES = ("POST", "PATCH", "PUT", "DELETE")

    def __init__(self, c: Any) -> None:
        self.c = c
        names = ("kube-apiserver", "etcd")
        self.pids = [p.popen.pid for p in c.procs if p.name in names and p.popen is not None]
        self.requests0, self.cpu0 = self._requests(), self._cpu()

    def _cpu(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids)

    def _requests(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        text = self.c.kubectl("get", "--raw", "/metrics", check=False, timeout=120)
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("verb") in self.WRITES:
                sub = "/" + labels["subresource"] if labels.get("subresource") else ""
                out[f"{labels['verb']} {labels.get('resource', '')}{sub}"] += int(
                    float(line.rsplit(" ", 1)[1])
                )
        return out

    def done(self) -> dict[str, Any]:
        writes = self._requests()
        writes.subtract(self.requests0)
        return {
            "apiserver_etcd_cpu_seconds": round(self._cpu() - self.cpu0, 1),
            "apiserver_writes": sum(v for v in writes.values() if v > 0),
            "apiserver_writes_by_resource": {k: v for k, v in writes.most_common() if v > 0},
        }


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(float(line.split()[1]) / 1024, 1)
    return float("nan")


def ratios(scenarios: dict[str, dict[str, Any]], jobs: int) -> list[str]:
    """Operator/direct in the same run, against the goals of issue #18."""
    out = []
    for label, s in scenarios.items():
        d, o = s.get("direct"), s["operator"]
        if d:
            wall = o["wall_to_last_pod_seconds"] / d["wall_to_last_pod_seconds"]
            p99 = o["pods_exist"]["p99"] / d["pods_exist"]["p99"]
            thr = o["pods_per_second"] / d["pods_per_second"]
            out.append(
                f"ratio {label} ({jobs} jobs): wall to last pod {wall:.2f}x"
                + (f" (goal <= {GOALS['burst_wall']})" if label == "burst" else "")
                + f", p99 submit->all pods {p99:.2f}x"
                + (f" (goal <= {GOALS['steady_p99']})" if label != "burst" else "")
                + f", pods/s {thr:.2f}x"
                + (f" (goal >= {GOALS['throughput']})" if label == "burst" else "")
                + f"; apiserver writes {o['apiserver_writes'] / max(d['apiserver_writes'], 1):.2f}x"
                + f", apiserver+etcd CPU {o['apiserver_etcd_cpu_seconds']} s vs "
                + f"{d['apiserver_etcd_cpu_seconds']} s"
            )
        out.append(
            f"operator {label}: {o['pods_per_second']} pods/s (direct "
            f"{d['pods_per_second'] if d else '-'}), VmHWM {o['operator_vmhwm_mib']} MiB "
            f"(idle {o['operator_rss_idle_mib']} MiB; goal <= {GOALS['rss']} MB at 1,000 jobs), "
            f"CPU {o['operator_cpu_seconds']} s"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2, help="pods per job")
    ap.add_argument("--nodes", type=int, default=60, help="kwok nodes (110 pods each)")
    ap.add_argument("--threads", type=int, default=16, help="parallel creates, both sides")
    ap.add_argument(
        "--rate",
        type=float,
        action="append",
        help="jobs per second; 0: one burst (repeatable; default: 0 and 20)",
    )
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--profile", action="store_true", help="py-spy the operator (top frames)")
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the operator under tracemalloc: where its memory is, idle and at the end",
    )
    ap.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="extra `llmtrain operator` argument (repeatable), e.g. --operator-arg=--verbose",
    )
    args = ap.parse_args(argv)
    rates = args.rate if args.rate is not None else [0.0, 20.0]

    workdir = Path(tempfile.mkdtemp(prefix="llmtrain-bench-"))
    print(f"control plane ({args.nodes} kwok nodes) in {workdir} ...", file=sys.stderr)
    scenarios: dict[str, dict[str, Any]] = {}
    with cp.Cluster(cp.build(), workdir, nodes=args.nodes) as c:
        c.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "llmtrainingjobs.yaml"))
        crd = "crd/llmtrainingjobs.llmtrain.io"
        cond = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        wait("CRD", lambda: "True" in c.kubectl("get", crd, "-o", cond, check=False), 60)
        from kubernetes import client as k

        client = c.api_client()
        client.configuration.connection_pool_maxsize = args.threads + 4
        core, custom = k.CoreV1Api(client), k.CustomObjectsApi(client)
        for rate in rates:
            label = "burst" if rate == 0 else f"{rate:g}/s"
            tag = "burst" if rate == 0 else f"rate{rate:g}".replace(".", "-")
            s: dict[str, Any] = {}
            if not args.skip_baseline:
                print(f"{label}: direct ...", file=sys.stderr)
                ns = f"direct-{tag}"
                s["direct"] = run_direct(c, core, ns, args.jobs, args.workers, rate, args.threads)
                c.kubectl("delete", "namespace", ns, "--wait=true", timeout=600, check=False)
            print(f"{label}: operator ...", file=sys.stderr)
            s["operator"] = run_operator(
                c,
                core,
                custom,
                f"operator-{tag}",
                args.jobs,
                args.workers,
                rate,
                args.threads,
                workdir,
                args.operator_arg,
                args.profile,
                args.tracemalloc,
            )
            scenarios[label] = s
    report = {
        "jobs": args.jobs,
        "pods_per_job": args.workers,
        "kwok_nodes": args.nodes,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "scenarios": scenarios,
    }
    print(json.dumps(report, indent=2))
    print("\n".join(ratios(scenarios, args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
