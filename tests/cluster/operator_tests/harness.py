"""Helpers for the operator's cluster tests: the operator subprocess, a fake driver's
/metrics, and a per-namespace harness to make jobs and drive their pods."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[3]
LLMTRAIN = Path(sys.executable).parent / "llmtrain"
SYSTEM_NS = "llmtrain-system"
RELEASE = "optest"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30, every: float = 0.2) -> Any:
    """Poll check() until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = check()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class OperatorProcess:
    """`llmtrain operator` in a subprocess, with its /metrics and /healthz on loopback."""

    def __init__(
        self, kubeconfig: Path, log: Path, *args: str, all_namespaces: bool = True
    ) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log = log
        argv = [
            str(LLMTRAIN),
            "operator",
            *(["--all-namespaces"] if all_namespaces else []),
            "--resync-seconds",
            "1",
            "--scrape-timeout",
            "1",
            # Tests that look at the backoff or the scrape grace pass their own (last wins).
            "--retry-backoff",
            "0",
            "--scrape-grace",
            "2",
            "--permanent-grace",
            "3",
            # Jobs go straight to their gang; tests of the initializer pass --initializer.
            "--no-initializer",
            "--metrics-bind",
            f"127.0.0.1:{self.metrics_port}",
            "--health-bind",
            f"127.0.0.1:{self.health_port}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(
            KUBECONFIG=str(kubeconfig),
            NO_PROXY="*",
            no_proxy="*",
            LLMTRAIN_TRAINER_IMAGE="registry.test/llmtrain/trainer:test",
        )
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, timeout: float = 30) -> OperatorProcess:
        url = f"http://127.0.0.1:{self.health_port}/healthz"

        def up() -> bool:
            assert self.proc.poll() is None, f"operator exited:\n{self.tail()}"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)

        wait_until("operator /healthz", up, timeout)
        return self

    def metrics(self) -> dict[str, float]:
        """Every sample, keyed like `name{label="v"}` (labels sorted)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def reconciles(self) -> float:
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("llmtrain_operator_reconciles_total"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class FakeDriver:
    """A rank-0 driver's /metrics (docs/contracts.md §4) at the pod's IP and metrics port."""

    NAMES = (
        "llmtrain_train_step",
        "llmtrain_train_total_steps",
        "llmtrain_train_loss",
        "llmtrain_tokens_per_second",
        "llmtrain_eta_seconds",
        "llmtrain_checkpoint_step",
    )

    def __init__(self, ip: str, port: int, job: str, stage: str, namespace: str) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {
            n: Gauge(n, n, ["namespace", "job", "stage"], registry=self.registry).labels(
                namespace, job, stage
            )
            for n in self.NAMES
        }
        self.server, self.thread = start_http_server(port, addr=ip, registry=self.registry)

    def set(self, **values: float) -> None:
        for k, v in values.items():
            self.gauges[f"llmtrain_{k}"].set(v)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


STORAGE_CLAIM = "llm-storage"


def bound_claim(cluster: Any, namespace: str, name: str = STORAGE_CLAIM) -> None:
    """A PVC bound to its own hostPath PV (the controller-manager binds them), so pods that
    mount it schedule on kwok nodes; jobs need storage that outlives their pods."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{name}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": f"/tmp/{namespace}-{name}"},
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": name},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": pv["metadata"]["name"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}),
    )
    wait_until(
        f"PVC {namespace}/{name} bound",
        lambda: cluster.get("pvc", name, namespace).get("status", {}).get("phase") == "Bound",
    )


class Harness:
    """One test namespace: make jobs, read them back, drive their pods."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace

    def job_manifest(
        self, name: str, stages: tuple[str, ...] = ("sft", "dpo"), workers: int = 2, **spec: Any
    ) -> dict[str, Any]:
        formats = {
            "sft": ("sft", "messages"),
            "dpo": ("dpo", "preference"),
            "pretrain": ("pretrain", "text"),
        }
        body: dict[str, Any] = {
            "apiVersion": "llmtrain.io/v1alpha1",
            "kind": "LLMTrainingJob",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "model": {"source": "org/base"},
                "stages": [
                    {
                        "name": s,
                        "type": formats[s][0],
                        "dataset": {"source": f"/storage/{s}.jsonl", "format": formats[s][1]},
                    }
                    for s in stages
                ],
                "resources": {
                    "workers": workers,
                    "gpusPerWorker": 1,
                    "cpu": "1",
                    "memory": "1Gi",
                    "shmSize": "1Gi",
                },
                "storage": {"pvc": {"claimName": STORAGE_CLAIM}},  # the `ns` fixture binds it
            },
        }
        body["spec"].update(spec)
        return body

    def apply(self, body: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def patch(self, name: str, patch: dict[str, Any], check: bool = True) -> str:
        out: str = self.cluster.kubectl(
            "patch",
            "llmtj",
            name,
            "-n",
            self.ns,
            "--type=merge",
            "-p",
            json.dumps(patch),
            check=check,
        )
        return out

    def job(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.cluster.get("llmtj", name, self.ns)
        return body

    def status(self, name: str) -> dict[str, Any]:
        st: dict[str, Any] = self.job(name).get("status") or {}
        return st

    def stage(self, name: str, stage: str) -> dict[str, Any]:
        return next(s for s in self.status(name).get("stages", []) if s["name"] == stage)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        conds = self.status(name).get("conditions", [])
        return next((c for c in conds if c["type"] == type_), None)

    def pods(self, selector: str = "") -> dict[str, dict[str, Any]]:
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.ns, "-o", "json", *(["-l", selector] if selector else [])
        )
        return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}

    @contextlib.contextmanager
    def watch_pod(self, name: str, jsonpath: str) -> Iterator[list[str]]:
        """`jsonpath` of every version of pod `name` a watch sees while the block runs, a
        line each (kwok removes a deleted pod at once: how it was deleted shows only on
        the way)."""
        proc = self.cluster.kubectl_popen(
            "get", "pod", name, "-n", self.ns, "--watch", "-o", f'jsonpath={jsonpath}{{"\\n"}}'
        )
        seen: list[str] = []
        reader = threading.Thread(
            target=lambda: seen.extend(ln.rstrip("\n") for ln in proc.stdout or [])
        )
        reader.start()
        try:
            wait_until("the watch's first line", lambda: seen, timeout=15)
            yield seen
        finally:
            proc.terminate()
            proc.wait(10)
            reader.join(10)

    def pod_names(self, job: str) -> set[str]:
        return set(self.pods(f"llmtrain.io/job={job}"))

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_until(
            f"{name} {phase}",
            lambda: (st := self.status(name)).get("phase") == phase and st,
            timeout,
        )

    def wait_pods(self, names: set[str], running: bool = True, timeout: float = 30) -> None:
        def ok() -> bool:
            pods = self.pods()
            return names <= set(pods) and (
                not running or all(pods[n]["status"].get("phase") == "Running" for n in names)
            )

        wait_until(f"pods {sorted(names)}", ok, timeout)

    def wait_gone(self, names: set[str], timeout: float = 30) -> None:
        wait_until(f"pods {sorted(names)} gone", lambda: not (names & set(self.pods())), timeout)

    def end_pod(
        self, name: str, phase: str, exit_code: int | None = None, message: str | None = None
    ) -> None:
        self.cluster.set_pod_phase(self.ns, name, phase, exit_code, message=message)

    def table(self, name: str, *args: str) -> dict[str, str]:
        """`kubectl get llmtj NAME` as {column: cell}; cells are cut at the header's offsets
        (empty cells, such as Loss before the first reading, would shift a split())."""
        header, row = self.cluster.kubectl("get", "llmtj", name, "-n", self.ns, *args).splitlines()
        starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
        bounds = list(zip(starts, [*starts[1:], None], strict=True))
        return {header[a:b].strip(): row[a:b].strip() for a, b in bounds}

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get",
            "events",
            "-n",
            self.ns,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.name={name}",
        )
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items
