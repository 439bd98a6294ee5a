"""The real-node cluster: pods really run (tests/controlplane/node.py).

    pytest -m e2e tests/e2e/test_real_node.py

`real_cluster` (one per session) is the test control plane plus one real node (containerd,
runc, kubelet, kube-proxy, CoreDNS) in a network namespace of its own, with the operator and
trainer images built from the Dockerfiles and already in the node's containerd. It offers
what the `cluster` fixture does (kubectl, helm, api_client, get, create_namespace, wait_for),
plus:

    real_cluster.trainer_image / .operator_image      image refs, present on the node
    real_cluster.chart_image_values()                 `--set`s pointing the chart at them
    real_cluster.create_pvc(namespace)                the `llm-storage` PVC (a hostPath PV)
    real_cluster.wait_pod(namespace, name)            Running and Ready (or other phases)
    real_cluster.advertise_gpus(8)                    fake nvidia.com/gpu capacity
    real_cluster.node_name, .node_ip

Cold, the first session builds the node binaries, the images (minutes) and the control plane;
warm, the cluster is up in well under a minute. Without what it needs (root, containerd,
Go...) the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_node() -> Any:
    # tests/controlplane is no package; load node.py by path, once, under a fixed name.
    name = "llmtrain_tests_controlplane_node"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests/controlplane/node.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


node = _load_node()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI=true and the real-node cluster cannot run: {reason}", pytrace=False)
    pytest.skip(f"real-node cluster: {reason}")


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The control plane plus one real node; see node.NodeCluster."""
    missing = node.prerequisites()
    if missing:
        _unavailable(f"missing {', '.join(missing)} (make tools)")
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        bin_dir = node.cp.build()
        node_bin = node.build_node()
        timings["node binaries"] = time.monotonic() - t
        t = time.monotonic()
        images = node.build_images()
        timings["images"] = time.monotonic() - t
    except (node.cp.GoMissing, node.PrerequisiteMissing) as e:
        _unavailable(str(e))
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{e.cmd} failed:\n{(e.stderr or '')[-6000:]}", pytrace=False)
    # Short: unix socket paths (containerd's, the apiserver bridge's) must stay < 108 bytes.
    workdir = Path(tmp_path_factory.mktemp("rn"))
    c = node.NodeCluster(bin_dir, workdir, node_bin=node_bin, images=images)
    try:
        c.start()
    except (node.cp.StartError, node.PrerequisiteMissing) as e:
        pytest.fail(f"real-node cluster did not start: {e}", pytrace=False)
    c.timings.update(timings)
    print(f"\nreal-node cluster: {', '.join(f'{k} {v:.1f}s' for k, v in c.timings.items())}")
    try:
        yield c
    finally:
        c.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the components' log tails to every failing test that used the real cluster."""
    report = yield
    c = getattr(item, "funcargs", {}).get("real_cluster")
    if report.failed and c is not None and report.when in ("setup", "call"):
        report.sections.append(("real-node cluster logs", c.log_tails()))
    return report


@pytest.fixture
def real_namespace(real_cluster: Any) -> Iterator[str]:
    """A fresh namespace on the real-node cluster, deleted afterwards."""
    name = f"rn-{uuid.uuid4().hex[:8]}"
    real_cluster.create_namespace(name)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
