"""Fixtures for tests against a real control plane (see tests/controlplane/cluster.py).

    pytest -m cluster tests/cluster

One control plane per session: etcd, kube-apiserver (Node,RBAC), kube-controller-manager,
kube-scheduler and kwok with three fake 8-GPU nodes, all on 127.0.0.1. The binaries come
from tests/controlplane/build.sh (cached after the first build). Without Go the tests are
skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "llmtrainingjobs.yaml"


def _load_controlplane() -> Any:
    # tests/ is not a package; load the shared module by path, once, under a fixed name.
    name = "llmtrain_tests_controlplane"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests/controlplane/cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


controlplane = _load_controlplane()
Cluster = controlplane.Cluster


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running control plane; see `Cluster` for kubectl(), api_client(), set_pod_phase()."""
    ci = _in_ci()
    if sys.platform != "linux" and not ci:
        pytest.skip("the test control plane runs on Linux only")
    try:
        bin_dir = controlplane.build()
    except controlplane.GoMissing as e:
        if ci:
            pytest.fail(f"CI=true and the control plane cannot be built: {e}", pytrace=False)
        pytest.skip(f"needs Go to build the control plane (tests/controlplane/build.sh): {e}")
    except subprocess.CalledProcessError as e:
        pytest.fail(
            f"tests/controlplane/build.sh failed:\n{(e.stderr or '')[-6000:]}", pytrace=False
        )
    c = Cluster(bin_dir, tmp_path_factory.mktemp("controlplane"), nodes=3)
    try:
        c.start()
    except controlplane.StartError as e:
        pytest.fail(f"control plane did not start: {e}", pytrace=False)
    try:
        yield c
    finally:
        c.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the components' log tails to every failing test that used the cluster."""
    report = yield
    c = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and c is not None and report.when in ("setup", "call"):
        report.sections.append(("control plane logs", c.log_tails()))
    return report


@pytest.fixture(scope="session")
def api(cluster: Any) -> Any:
    """A cluster-admin kubernetes.client.ApiClient."""
    client = cluster.api_client()
    yield client
    client.close()


@pytest.fixture
def namespace(cluster: Any) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def llmtj_crd(cluster: Any) -> dict[str, Any]:
    """The generated LLMTrainingJob CRD, applied and Established."""
    name = "llmtrainingjobs.llmtrain.io"
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    # Not `kubectl wait`: it fails at once when the CRD has no status.conditions yet.
    cluster.wait_for(
        f"crd/{name} Established",
        lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in cluster.get("crd", name).get("status", {}).get("conditions") or []
        ),
        60,
    )
    crd: dict[str, Any] = cluster.get("crd", name)
    return crd
