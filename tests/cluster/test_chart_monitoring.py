"""The real operator under the chart's RBAC, watched by a real Prometheus, runs a job.

    pytest -m cluster tests/cluster/test_chart_monitoring.py

The chart is installed into the test control plane. Its operator pods cannot run under kwok,
so `llmtrain operator` runs here as a subprocess with the Deployment's own arguments and
environment, authenticated with a token of the chart's operator ServiceAccount. It takes a
job through its life: pods created, a retryable failure (exit 137) and a restart, a driver
that reports progress, success, and deletion after ttlSecondsAfterFinished. Nothing may be
forbidden along the way: not by the chart's RBAC, and not by its admission policy, which
holds every pod the operator creates to the job-pod rules. With the chart's default
`networkPolicy.enabled` the operator isolates each attempt with a NetworkPolicy.

kwok gives pods IPs in 127.100.0.0/16; on Linux all of 127/8 is loopback, so the driver for
the head pod serves /metrics on the pod's own IP, where both the operator (progress) and
Prometheus (the PodMonitor's settings) scrape it. All traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import apply_monitoring_crds, dashboard, find, install, manifest
from tests.monitoring.prom import (
    NEEDS_GPU,
    Prometheus,
    check_rules,
    check_variables,
    dashboard_gaps,
    free_port,
    scrape_config_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STAND_IN = REPO / "tests" / "monitoring" / "contract_exporter.py"
# kopf's APIForbiddenError and the client's ApiException both say "Forbidden"; "(403)" is
# the client's status. (A bare 403 would match timestamps and ports.)
FORBIDDEN = re.compile(r"[Ff]orbidden|\(403\)")


def _job(name: str, claim: str | None) -> dict[str, Any]:
    """The quickstart's pretrain stage as its header says to run it on a cluster: absolute
    paths into storage that outlives the pods (`claim`, else the chart's jobDefaults.pvc)."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec["stages"] = spec["stages"][:1]  # pretrain
    spec["stages"][0]["dataset"]["source"] = "/storage/quickstart/corpus.txt"
    spec["model"]["tokenizer"]["source"] = "/storage/quickstart/tokenizer"
    spec["runPolicy"] = {"backoffLimit": 2, "ttlSecondsAfterFinished": 8}
    if claim:
        spec["storage"] = {"pvc": {"claimName": claim}}
    return doc


def _bound_claim(cluster: Any, ns: str, claim: str, volume: str) -> None:
    """A PVC bound to a static hostPath PV: the scheduler's volume binding then passes."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/{volume}"},
            "claimRef": {"namespace": ns, "name": claim},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": volume,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}),
    )
    cluster.wait_for(
        f"claim {claim} bound",
        lambda: (
            json.loads(cluster.kubectl("get", "pvc", claim, "-n", ns, "-o", "json"))["status"].get(
                "phase"
            )
            == "Bound"
        ),
        timeout=60,
    )


def _pods(cluster: Any, ns: str, job: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", f"llmtrain.io/job={job}", "-o", "json")
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return pods


def _head(cluster: Any, ns: str, job: str, attempt: int) -> dict[str, Any] | None:
    for p in _pods(cluster, ns, job):
        labels = p["metadata"]["labels"]
        if (
            labels.get("llmtrain.io/role") == "head"
            and labels.get("llmtrain.io/attempt") == str(attempt)
            and p["status"].get("podIP")
            and p["status"].get("phase") == "Running"
        ):
            return p
    return None


def _status(cluster: Any, ns: str, job: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "llmtj", job, "-n", ns, "-o", "json", check=False)
    return json.loads(out).get("status", {}) if out else {}


class Operator:
    """`llmtrain operator` with the chart Deployment's args and env, as the chart's SA."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, workdir: Path):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.metrics_port, self.health_port = free_port(), free_port()
        args = []
        for a in container["args"]:  # the pod's binds, moved to loopback ports
            if a.startswith("--metrics-bind="):
                a = f"--metrics-bind=127.0.0.1:{self.metrics_port}"
            elif a.startswith("--health-bind="):
                a = f"--health-bind=127.0.0.1:{self.health_port}"
            args.append(a)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
        env.update(
            KUBECONFIG=str(kubeconfig),
            POD_ID="test-operator",
            POD_NAMESPACE=deployment["metadata"]["namespace"],
            LLMTRAIN_RESYNC_SECONDS="1",
            # kwok runs no container, so no initializer ever finishes here (its own tests
            # play its outcome: operator_tests/test_operator_initializer.py).
            LLMTRAIN_INITIALIZER="false",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        self.argv = [str(Path(sys.executable).parent / "llmtrain"), "operator", *args]
        self.log = workdir / "operator.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _check_network_policy(
    cluster: Any, ns: str, job: str, head: dict[str, Any], env: dict[str, Any], metrics_port: int
) -> None:
    """The operator isolated the attempt: a NetworkPolicy owned by the job, selecting its
    pods, admitting the job's own pods, and on the metrics port only the chart's peers."""
    assert env["LLMTRAIN_NETWORK_POLICY"] == "true"
    peers = json.loads(env["LLMTRAIN_METRICS_FROM"])
    items = json.loads(cluster.kubectl("get", "networkpolicies", "-n", ns, "-o", "json"))["items"]
    labels = head["metadata"]["labels"]
    mine = [
        p
        for p in items
        if {o["kind"] for o in p["metadata"].get("ownerReferences", [])} == {"LLMTrainingJob"}
        and p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
        and p["spec"]["podSelector"].get("matchLabels", {}).get("llmtrain.io/job") == job
    ]
    assert len(mine) == 1, items
    ingress = mine[0]["spec"]["ingress"]
    same_job = [
        r
        for r in ingress
        if not r.get("ports")
        and any(
            f.get("podSelector", {}).get("matchLabels", {}).get("llmtrain.io/job") == job
            and "namespaceSelector" not in f
            for f in r.get("from", [])
        )
    ]
    assert same_job, ingress
    metrics = [r for r in ingress if r.get("ports")]
    assert metrics and all([p["port"] for p in r["ports"]] == [metrics_port] for r in metrics)
    assert [f for r in metrics for f in r["from"]] == peers


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(10)


@pytest.mark.parametrize("mode", ["all-namespaces", "namespaced"])
def test_operator_lifecycle_under_chart_rbac(
    cluster: Any, tmp_path: Path, processes: list[subprocess.Popen[bytes]], mode: str
) -> None:
    from tests.monitoring.conftest import _tool

    prometheus_bin = _tool("prometheus")
    apply_monitoring_crds(cluster)
    suffix = uuid.uuid4().hex[:6]
    sys_ns, job_ns, release = f"lt-sys-{suffix}", f"lt-jobs-{suffix}", f"lm{suffix}"
    cluster.create_namespace(sys_ns)
    cluster.create_namespace(job_ns)
    if mode == "all-namespaces":  # a ClusterRole, ClusterKopfPeering
        # Job pods run as the namespace's `default`: the job namespace needs nothing from
        # the chart. The job names its own claim (a static PV, bound).
        claim = "job-claim"
        _bound_claim(cluster, job_ns, claim, f"lt-pv-{suffix}")
        install(
            cluster,
            release,
            sys_ns,
            "defaults-values.yaml",
            f"operator.peering.name=p-{release}",
            "operator.replicas=1",
        )
    else:  # a Role in the watched namespace, KopfPeering there, a chart-made worker SA
        # The values' jobDefaults.pvc: jobs without storage mount it (a static PV, bound).
        claim = None
        _bound_claim(cluster, job_ns, "llm-checkpoints", f"lt-pv-{suffix}")
        install(
            cluster,
            release,
            sys_ns,
            "namespaced-values.yaml",
            f"watch.namespaces={{{job_ns}}}",
            "operator.replicas=1",
            "operator.nodeSelector=null",
            "operator.tolerations=null",
            "jobDefaults.metricsPort=9400",
        )
    docs = manifest(cluster, release, sys_ns)
    deployment = find(docs, "Deployment")
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    operator = Operator(deployment, cluster.kubeconfig_for_sa(sys_ns, sa), tmp_path)
    processes.append(operator.proc)

    driver_port = 9400  # the job's spec.monitoring.metricsPort (default)
    head_ip: dict[str, str] = {}
    scrape = [
        scrape_config_for(
            find(docs, "ServiceMonitor"),
            f"127.0.0.1:{operator.metrics_port}",
            {"namespace": sys_ns, "service": find(docs, "Service")["metadata"]["name"]},
        ),
    ]
    rules = tmp_path / "rules.yaml"
    rule = find(docs, "PrometheusRule")
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    job = f"qs{suffix}"
    try:
        # Prometheus starts first so it sees the whole life; the driver target is added once
        # its pod has an IP (Prometheus reloads its config on SIGHUP).
        prom = Prometheus(prometheus_bin, tmp_path, scrape, rule_files=[rules])
        prom.start()
        start = time.time()
        prom.wait_for_samples(f'up{{job="{scrape[0]["job_name"]}"}} == 1', timeout=60)

        cluster.kubectl("apply", "-n", job_ns, "-f", "-", input=json.dumps(_job(job, claim)))
        # Attempt 1: pods come up (kwok), then the head dies with a retryable code.
        cluster.wait_for(
            "attempt 1 head running", lambda: _head(cluster, job_ns, job, 1), timeout=90
        )
        head = _head(cluster, job_ns, job, 1)
        assert head is not None
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in head["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {claim or "llm-checkpoints"}, claims
        # The worker ServiceAccount the chart passed on: `default`, or the one it made.
        env = {
            e["name"]: e.get("value")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert head["spec"]["serviceAccountName"] == (
            env["LLMTRAIN_WORKER_SERVICE_ACCOUNT"] or "default"
        )
        assert head["spec"]["automountServiceAccountToken"] is False
        cluster.set_pod_phase(job_ns, head["metadata"]["name"], "Failed", exit_code=137)
        # Attempt 2 gets a driver that trains and reports.
        cluster.wait_for(
            "attempt 2 head running", lambda: _head(cluster, job_ns, job, 2), timeout=90
        )
        head = _head(cluster, job_ns, job, 2)
        assert head is not None
        head_ip["ip"] = head["status"]["podIP"]
        _check_network_policy(cluster, job_ns, job, head, env, driver_port)
        driver = subprocess.Popen(
            [
                sys.executable,
                str(STAND_IN),
                "--host",
                head_ip["ip"],
                "--port",
                str(driver_port),
                "--namespace",
                job_ns,
                "--job",
                job,
                "--stage",
                "pretrain",
                "--steps",
                "30",
                "--step-seconds",
                "0.3",
            ],
            stdout=(tmp_path / "driver.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        processes.append(driver)
        pm = scrape_config_for(
            find(docs, "PodMonitor"),
            f"{head_ip['ip']}:{driver_port}",
            {"namespace": job_ns, "pod": head["metadata"]["name"]},
        )
        prom.config.write_text(
            yaml.safe_dump(
                {**yaml.safe_load(prom.config.read_text()), "scrape_configs": [*scrape, pm]},
                sort_keys=False,
            )
        )
        assert prom.proc is not None
        prom.proc.send_signal(1)  # SIGHUP: reload
        prom.wait_for_samples(f'llmtrain_train_step{{job="{job}"}} == 30', timeout=90)

        # The operator copied the driver's progress into the status.
        cluster.wait_for(
            "progress in status",
            lambda: _status(cluster, job_ns, job).get("progress", "").startswith("30/"),
            timeout=60,
        )
        cluster.set_pod_phase(job_ns, head["metadata"]["name"], "Succeeded")
        cluster.wait_for(
            "job Succeeded",
            lambda: _status(cluster, job_ns, job).get("phase") == "Succeeded",
            timeout=60,
        )
        prom.wait_for_samples(
            f'llmtrain_operator_jobs{{namespace="{job_ns}", phase="Succeeded"}} == 1', timeout=30
        )
        prom.wait_for_samples(
            f'llmtrain_operator_job_phase{{namespace="{job_ns}", job="{job}",'
            f' phase="Succeeded"}} == 1',
            timeout=30,
        )
        # ttlSecondsAfterFinished: the operator deletes the job (its `delete` permission).
        cluster.wait_for(
            "job deleted after its TTL",
            lambda: (
                not cluster.kubectl(
                    "get", "llmtj", job, "-n", job_ns, "--ignore-not-found", "-o", "name"
                )
            ),
            timeout=60,
        )
        events = cluster.kubectl("get", "events", "-n", job_ns, "-o", "json")
        reasons = {
            e["reason"]
            for e in json.loads(events)["items"]
            if e["involvedObject"].get("kind") == "LLMTrainingJob"
        }
        assert reasons, "the operator posted no events on the job"
        time.sleep(3)
        end = time.time()

        # Operator metrics as Prometheus scraped them from the real operator.
        assert prom.query("sum(llmtrain_operator_pods_created_total) >= 2")
        assert prom.query('sum(llmtrain_operator_reconciles_total{result="ok"}) > 0')
        restarts = prom.query_range("llmtrain_operator_stage_restarts_total", start, end)
        assert {(r["metric"]["namespace"], r["metric"]["job"]) for r in restarts} == {
            (job_ns, job)
        }, "no restart counted after exit 137"
        assert prom.query('llmtrain_operator_stage_duration_seconds_count{type="pretrain"} >= 1')
        assert prom.query("process_resident_memory_bytes")
        # The job is deleted: its per-job series are gone from the operator's /metrics.
        prom.wait_for(
            "the deleted job's series dropped",
            lambda: not prom.query(f'llmtrain_operator_job_phase{{job="{job}"}}'),
            timeout=30,
        )
        assert not prom.query(f'llmtrain_operator_stage_restarts_total{{job="{job}"}}')

        variables = {"namespace": job_ns, "job": job, "stage": "pretrain"}
        dash = dashboard()
        gaps, gpu_seen = dashboard_gaps(prom, dash, variables, start, end)
        # This job names no Kueue queue and no gate: tests/monitoring/test_prometheus.py
        # gives those two panels their data.
        gaps = [g for g in gaps if not g.startswith(("Time queued:", "Quality gates:"))]
        assert gaps == [], "dashboard queries without data:\n" + "\n".join(gaps)
        assert gpu_seen == set(NEEDS_GPU)
        check_variables(prom, dash, variables, start, end)
        check_rules(prom, rule)
    finally:
        operator.stop()
        if "prom" in locals():
            prom.stop()
    log = operator.text()
    denied = [line for line in log.splitlines() if FORBIDDEN.search(line)]
    assert denied == [], "permission errors under the chart's RBAC:\n" + "\n".join(denied)
    cluster.helm("uninstall", release, "--namespace", sys_ns, "--wait", timeout=120)
