"""A real Kueue (v0.17, built from the Go module proxy) on the test control plane.

    from tests.cluster.operator_tests.kueue_fixture import kueue  # the session fixture

tests/controlplane/kueue/build.sh builds the controller-manager and copies the CRDs out of
the same downloaded module. It runs on loopback with the cluster-admin kubeconfig and a
Configuration that registers `LLMTrainingJob.v1alpha1.llmtrain.io` as an external framework.

Webhooks: Kueue's internal cert management is on (the manager will not start without
certificates: the metrics server wants them too), and its webhook server listens on
127.0.0.1, but no (Validating|Mutating)WebhookConfiguration is installed, so the apiserver
never calls it: the objects tests create are complete without Kueue's defaulting. The
fixture copies the certificate the rotator writes into its Secret to the webhook's certDir
(the kubelet's Secret volume, in a cluster). The cert
rotator must inject a CA into the conversion webhooks of five CRDs, so those CRDs carry a
conversion stanza pointing at the loopback server; everything here speaks v1beta2 (the
storage version), so no conversion is ever requested.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "tests" / "controlplane" / "kueue" / "build.sh"
NAMESPACE = "kueue-system"
FRAMEWORK = "LLMTrainingJob.v1alpha1.llmtrain.io"
# The CRDs whose conversion webhook Kueue's cert rotator injects a CA into.
CONVERTED = {"localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters"}


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def build() -> Path:
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True)
    if proc.returncode == 127:
        raise FileNotFoundError("go not found on PATH")
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def install_crds(cluster: Any, crd_dir: Path, webhook_port: int) -> None:
    docs = []
    for f in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {"url": f"https://127.0.0.1:{webhook_port}/convert"},
                },
            }
        docs.append(crd)
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=body)
    for crd in docs:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def configuration(workdir: Path, health: int, metrics: int, webhook: int) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
        "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(workdir / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": "kueue-webhook-service",
            "webhookSecretName": "kueue-webhook-server-cert",
        },
        "integrations": {"frameworks": ["batch/job"], "externalFrameworks": [FRAMEWORK]},
    }


def _mount_certs(cluster: Any, workdir: Path) -> bool:
    secret = json.loads(
        cluster.kubectl("get", "secret", "kueue-webhook-server-cert", "-n", NAMESPACE, "-o", "json")
    )
    data = secret.get("data") or {}
    if not data.get("tls.crt"):
        return False
    certs = workdir / "certs"
    certs.mkdir(exist_ok=True)
    for key, value in data.items():
        (certs / key).write_bytes(base64.b64decode(value))
    return True


@pytest.fixture(scope="session")
def kueue(
    cluster: Any, operator_crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Kueue's controller-manager, running until the session ends; returns its Process."""
    cp = sys.modules["llmtrain_tests_controlplane"]  # tests/cluster/conftest.py loaded it
    try:
        out = build()
    except FileNotFoundError as e:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and Kueue cannot be built: {e}", pytrace=False)
        pytest.skip(f"needs Go to build Kueue: {e}")
    workdir = tmp_path_factory.mktemp("kueue")
    health, metrics, webhook = _ports(3)
    install_crds(cluster, out / "crds", webhook)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl(
        "create", "secret", "generic", "kueue-webhook-server-cert", "-n", NAMESPACE, check=False
    )
    cfg = workdir / "config.yaml"
    cfg.write_text(json.dumps(configuration(workdir, health, metrics, webhook)))
    argv = [
        str(out / "bin" / "kueue"),
        f"--config={cfg}",
        "--feature-gates=VisibilityOnDemand=false",
        f"--kubeconfig={cluster.kubeconfig}",
    ]
    proc = cp.Process("kueue", argv, workdir / "kueue.log")
    cluster.procs.append(proc)  # its log tail joins the others on failure
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    t0 = time.monotonic()
    proc.start(env)
    try:
        # In a cluster the kubelet mounts the Secret the cert rotator fills into certDir;
        # here the fixture copies it there, and the rotator waits for the files.
        cluster.wait_for("Kueue's webhook certificate", lambda: _mount_certs(cluster, workdir), 60)
        cluster.wait_for(
            "kueue /readyz",
            lambda: cluster._http_get(f"http://127.0.0.1:{health}/readyz") is not None,
            120,
        )
    except TimeoutError:
        pytest.fail(f"Kueue did not become ready:\n{proc.tail(80)}", pytrace=False)
    print(f"kueue: ready {time.monotonic() - t0:.1f}s after start")
    # The CA is injected; the serving certificate names the in-cluster Service, not
    # 127.0.0.1, so the apiserver could not call the conversion webhook: with strategy None
    # it converts v1beta1 <-> v1beta2 by relabelling, for anything that asks for v1beta1.
    for plural in CONVERTED:
        cluster.kubectl(
            "patch",
            "crd",
            f"{plural}.kueue.x-k8s.io",
            "--type=merge",
            "-p",
            '{"spec":{"conversion":{"strategy":"None","webhook":null}}}',
        )
    yield proc
    proc.signal(15)
    proc.wait(10)
