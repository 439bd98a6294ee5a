"""Fixtures for the operator on the real control plane (tests/cluster/conftest.py).

    pytest -m cluster tests/cluster/operator_tests

The operator runs as users run it, `llmtrain operator ...` in a subprocess, authenticated
as the ServiceAccount the Helm chart creates, with exactly the chart's RBAC (rendered by
`helm template`). Pods are driven the way a kubelet would report them: kwok runs them,
`cluster.set_pod_phase` ends them. A driver's /metrics is a real prometheus_client server
bound to the pod's IP, which kwok takes from 127.100.0.0/16.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.operator_tests.harness import (
    RBAC_KINDS,
    RELEASE,
    REPO,
    SYSTEM_NS,
    FakeDriver,
    Harness,
    OperatorProcess,
    bound_claim,
)


@pytest.fixture(scope="session")
def operator_crds(cluster: Any, llmtj_crd: dict[str, Any]) -> None:
    """The LLMTrainingJob CRD and kopf's peering CRDs."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "kopf-peering.yaml"))
    for crd in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


@pytest.fixture(scope="session")
def chart_rbac(cluster: Any, operator_crds: None) -> dict[str, Any]:
    """The chart's operator ServiceAccount, (Cluster)Roles and bindings, as `helm template`
    renders them for an all-namespaces install; returns the kubeconfig and the rules."""
    server = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    with contextlib.suppress(Exception):
        cluster.create_namespace(SYSTEM_NS)
    text = cluster.helm(
        "template",
        RELEASE,
        str(REPO / "charts" / "llmtrain"),
        "--namespace",
        SYSTEM_NS,
        "--kube-version",
        server.lstrip("v"),
    )
    docs = [d for d in yaml.safe_load_all(text) if d]
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac})
    )
    sa = next(
        d["metadata"]["name"]
        for d in rbac
        if d["kind"] == "ServiceAccount"
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    )
    role = next(
        d
        for d in rbac
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == f"{RELEASE}-llmtrain-operator"
    )
    # The apiserver's RBAC authorizer learns new bindings from a watch: under load that lags,
    # and an operator started before it would log 403s. Wait until the grant is visible.
    who = f"system:serviceaccount:{SYSTEM_NS}:{sa}"
    deadline = time.monotonic() + 60
    can = ("auth", "can-i", "patch", "llmtrainingjobs.llmtrain.io/status", "-A", "--as", who)
    while cluster.kubectl(*can, check=False).strip() != "yes" and time.monotonic() < deadline:
        time.sleep(0.5)
    return {
        "kubeconfig": cluster.kubeconfig_for_sa(SYSTEM_NS, sa),
        "sa": sa,
        "rules": role["rules"],
    }


@pytest.fixture
def start_operator(
    cluster: Any, chart_rbac: dict[str, Any], tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """start_operator(*args) -> a ready OperatorProcess running as the chart's ServiceAccount.
    All are stopped at the end; their logs are printed when the test failed."""
    procs: list[OperatorProcess] = []

    def start(*args: str, ready: bool = True, all_namespaces: bool = True) -> OperatorProcess:
        log = tmp_path / f"operator-{len(procs)}.log"
        p = OperatorProcess(chart_rbac["kubeconfig"], log, *args, all_namespaces=all_namespaces)
        procs.append(p)
        return p.wait_ready() if ready else p

    yield start
    for p in procs:
        p.stop()
    for p in procs:
        print(f"----- {p.log} -----\n{p.tail(200)}")


@pytest.fixture
def ns(cluster: Any, chart_rbac: dict[str, Any]) -> Iterator[str]:
    """A fresh namespace enforcing the `restricted` Pod Security Standard, with a bound
    storage claim for the jobs. At the end its jobs lose the operator's finalizer, so the
    namespace goes without an operator."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    cluster.kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    bound_claim(cluster, name)
    yield name
    cluster.kubectl("delete", "llmtj", "--all", "-n", name, "--wait=false", check=False)
    out = cluster.kubectl("get", "llmtj", "-n", name, "-o", "name", check=False)
    for job in out.split():
        cluster.kubectl(
            "patch",
            job,
            "-n",
            name,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def drivers() -> Iterator[Callable[..., FakeDriver]]:
    made: list[FakeDriver] = []

    def make(ip: str, port: int, job: str, stage: str, namespace: str) -> FakeDriver:
        d = FakeDriver(ip, port, job, stage, namespace)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def h(cluster: Any, ns: str) -> Harness:
    return Harness(cluster, ns)
