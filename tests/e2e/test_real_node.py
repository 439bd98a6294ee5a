"""Smoke tests of the real-node cluster (tests/e2e/conftest.py): what job pods rely on works.

    pytest -m e2e tests/e2e/test_real_node.py -s     # -s prints the start-up timings

The trainer image as built from Dockerfile.trainer runs as uid 1000 under the operator's own
restricted securityContext and imports the training stack on CPU; pods find each other by
the DNS names the operator gives them (hostname + subdomain + headless Service) and talk TCP;
kubectl logs and exec reach the kubelet; a PVC carries files from one pod to the next; and
the chart, pointed at the operator image, gives a Ready operator pod.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtrain.operator.manifests import CONTAINER_SECURITY, POD_SECURITY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmtrain"
IMPORTS = "import torch, ray, deepspeed, transformers, peft, trl, bitsandbytes"


def pod(name: str, image: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod shaped like the operator's: restricted, uid 1000, requests equal to limits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": POD_SECURITY,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "securityContext": CONTAINER_SECURITY,
                    "resources": {
                        "requests": {"cpu": "250m", "memory": "1Gi"},
                        "limits": {"cpu": "250m", "memory": "1Gi"},
                    },
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def apply(cluster: Any, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )


def logs(cluster: Any, namespace: str, name: str) -> str:
    out: str = cluster.kubectl("logs", "-n", namespace, name)
    return out


@pytest.fixture
def restricted_namespace(real_cluster: Any, real_namespace: str) -> str:
    real_cluster.kubectl(
        "label", "namespace", real_namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return real_namespace


def test_trainer_image_imports_the_training_stack_as_uid_1000(
    real_cluster: Any, restricted_namespace: str
) -> None:
    script = (
        "id -u; llmtrain --version; "
        f"python -c 'import time; t = time.time(); {IMPORTS}; "
        'print("imports", round(time.time() - t, 1), "s"); '
        "x = torch.ones(4, 4, requires_grad=True); (x @ x).sum().backward(); "
        'print("torch", torch.__version__, "cpu grad", float(x.grad.sum()), '
        '"cuda", torch.cuda.is_available())\''
    )
    apply(
        real_cluster,
        restricted_namespace,
        pod(
            "trainer",
            real_cluster.trainer_image,
            script,
            container={
                "resources": {
                    "requests": {"cpu": "1", "memory": "3Gi"},
                    "limits": {"cpu": "1", "memory": "3Gi"},
                }
            },
        ),
    )
    t = time.monotonic()
    done = real_cluster.wait_pod(restricted_namespace, "trainer", ("Succeeded", "Failed"), 300)
    out = logs(real_cluster, restricted_namespace, "trainer")
    print(f"\ntrainer pod ran in {time.monotonic() - t:.1f}s:\n{out}")
    assert done["status"]["phase"] == "Succeeded", out
    lines = out.splitlines()
    assert lines[0] == "1000"
    assert lines[1].startswith("llmtrain ")
    assert "cpu grad 128.0 cuda False" in out


def test_headless_service_names_resolve_and_carry_tcp(
    real_cluster: Any, restricted_namespace: str
) -> None:
    ns, image = restricted_namespace, real_cluster.operator_image
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "gang"},
        "spec": {
            "clusterIP": "None",
            "selector": {"gang": "g"},
            "publishNotReadyAddresses": True,
            "ports": [{"port": 7000}],
        },
    }
    server = (
        'python3 -c \'import socket; s = socket.create_server(("", 7000)); '
        "c, a = s.accept(); "  # the worker waits for the answer: it is alive to be found
        f'ok = a[0] == socket.gethostbyname("worker.gang.{ns}.svc"); '
        'c.sendall(b"pong " + c.recv(64)); c.close(); print(ok)\''
    )
    client = (
        "python3 -c 'import socket, time\n"
        f'name = "head.gang.{ns}.svc"\n'
        "for _ in range(120):\n"
        "    try:\n"
        "        c = socket.create_connection((name, 7000), timeout=2); break\n"
        "    except OSError as e:\n"
        "        err = e; time.sleep(0.5)\n"
        "else:\n"
        '    raise SystemExit(f"{name}: {err}")\n'
        'c.sendall(b"ping"); print(socket.gethostbyname(name), c.recv(64).decode())\''
    )
    head = pod("head", image, server, hostname="head", subdomain="gang")
    worker = pod("worker", image, client, hostname="worker", subdomain="gang")
    for p in (head, worker):
        p["metadata"]["labels"]["gang"] = "g"
    apply(real_cluster, ns, svc, head, worker)
    done = real_cluster.wait_pod(ns, "worker", ("Succeeded", "Failed"), 120)
    out = logs(real_cluster, ns, "worker")
    assert done["status"]["phase"] == "Succeeded", out
    head_ip = real_cluster.get("pod", "head", ns)["status"]["podIP"]
    assert out.split() == [head_ip, "pong", "ping"]
    # And the other way: the head finds the worker's name at the address it came from.
    assert (
        real_cluster.wait_pod(ns, "head", ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
    ), logs(real_cluster, ns, "head")
    assert logs(real_cluster, ns, "head") == "True\n"


def test_nothing_outside_the_cluster_is_reachable(
    real_cluster: Any, restricted_namespace: str
) -> None:
    """The cluster's netns has no way out: CoreDNS asks no upstream, and there is no route."""
    script = (
        "python3 -c 'import socket\n"
        'for name in ("pypi.org", "kubernetes.default.svc"):\n'
        "    try:\n"
        "        print(name, socket.gethostbyname(name))\n"
        "    except OSError as e:\n"
        '        print(name, "unresolved")\n'
        "try:\n"
        '    socket.create_connection(("203.0.113.1", 80), timeout=3); print("connected")\n'
        "except OSError as e:\n"
        '    print("no route" if e.errno == 101 else e)\''
    )
    apply(real_cluster, restricted_namespace, pod("outside", real_cluster.operator_image, script))
    real_cluster.wait_pod(restricted_namespace, "outside", ("Succeeded",))
    assert logs(real_cluster, restricted_namespace, "outside").splitlines() == [
        "pypi.org unresolved",
        "kubernetes.default.svc 10.96.0.1",
        "no route",
    ]


def test_kubectl_logs_and_exec(real_cluster: Any, restricted_namespace: str) -> None:
    ns = restricted_namespace
    apply(
        real_cluster,
        ns,
        pod("sleeper", real_cluster.operator_image, "echo started; exec sleep 600"),
    )
    real_cluster.wait_pod(ns, "sleeper")
    real_cluster.wait_for("logs", lambda: logs(real_cluster, ns, "sleeper") == "started\n")
    out = real_cluster.kubectl(
        "exec", "-n", ns, "sleeper", "--", "sh", "-c", "id -u; cat /etc/hostname; echo $((6 * 7))"
    )
    assert out.split() == ["1000", "sleeper", "42"]


def test_pvc_carries_files_between_pods(real_cluster: Any, restricted_namespace: str) -> None:
    ns, image = restricted_namespace, real_cluster.operator_image
    real_cluster.create_pvc(ns)
    volume = {
        "volumes": [
            {"name": "storage", "persistentVolumeClaim": {"claimName": real_cluster.pvc_name}}
        ]
    }
    mount = {"volumeMounts": [{"name": "storage", "mountPath": "/storage"}]}
    apply(
        real_cluster,
        ns,
        pod(
            "writer",
            image,
            "mkdir -p /storage/run && echo written-by-$(id -u) > /storage/run/hello",
            container=mount,
            **volume,
        ),
    )
    assert (
        real_cluster.wait_pod(ns, "writer", ("Succeeded", "Failed"))["status"]["phase"]
        == "Succeeded"
    ), logs(real_cluster, ns, "writer")
    apply(
        real_cluster, ns, pod("reader", image, "cat /storage/run/hello", container=mount, **volume)
    )
    assert (
        real_cluster.wait_pod(ns, "reader", ("Succeeded", "Failed"))["status"]["phase"]
        == "Succeeded"
    )
    assert logs(real_cluster, ns, "reader") == "written-by-1000\n"


def test_chart_with_the_operator_image_gives_a_ready_operator(
    real_cluster: Any, restricted_namespace: str
) -> None:
    ns, release = restricted_namespace, "rn"
    args = [
        "install",
        release,
        str(CHART),
        "--namespace",
        ns,
        "--values",
        str(CHART / "ci" / "monitoring-off-values.yaml"),
    ]
    for s in real_cluster.chart_image_values():
        args += ["--set", s]
    t = time.monotonic()
    real_cluster.helm(*args, timeout=180)
    try:
        [deployment] = real_cluster.kubectl(
            "get",
            "deployments",
            "-n",
            ns,
            "-o",
            "name",
            "-l",
            f"app.kubernetes.io/instance={release}",
        ).split()
        real_cluster.kubectl(
            "rollout", "status", "-n", ns, deployment, "--timeout=180s", timeout=200
        )
        pods = json.loads(
            real_cluster.kubectl(
                "get",
                "pods",
                "-n",
                ns,
                "-o",
                "json",
                "-l",
                f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator",
            )
        )
        print(f"\noperator Ready {time.monotonic() - t:.1f}s after helm install")
        [operator] = pods["items"]
        assert operator["spec"]["containers"][0]["image"] == real_cluster.operator_image
        assert all(c["ready"] for c in operator["status"]["containerStatuses"])
        # The image has no kubernetes client: the operator logs in with its ServiceAccount
        # (kube.login) and kopf puts its finalizer on a job; the uninstall hook, the same image
        # as another ServiceAccount, takes it off (a TTL keeps the timer, so the finalizer).
        job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
        job["metadata"]["namespace"] = ns
        job["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 3600}
        apply(real_cluster, ns, job)

        def finalizers() -> list[str]:
            out = real_cluster.kubectl(
                "get", "llmtj", job["metadata"]["name"], "-n", ns, "-o", "json"
            )
            return list(json.loads(out)["metadata"].get("finalizers") or [])

        real_cluster.wait_for("the operator's finalizer", lambda: bool(finalizers()), 60)
        real_cluster.helm("uninstall", release, "--namespace", ns, "--wait", timeout=200)
        assert finalizers() == [], "the uninstall hook left the finalizer"
    finally:
        real_cluster.helm("uninstall", release, "--namespace", ns, "--wait", check=False)
