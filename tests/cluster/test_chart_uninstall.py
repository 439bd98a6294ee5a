"""`llmtrain cleanup`, the chart's uninstall hook, on the real control plane, as the hook's own
ServiceAccount with the hook's own RBAC (rendered by `helm template`).

    pytest -m cluster tests/cluster/test_chart_uninstall.py

kwok completes Job pods without running them, so the hook Job itself proves nothing here
(tests/chart/test_uninstall_hook.py checks how it renders; tests/cluster/test_chart_install.py
that `helm uninstall` runs and removes it). This runs the command the Job runs: a job still
holding the operator's finalizer hangs on delete, and so does its namespace; after
`llmtrain cleanup` both go, and another controller's finalizer is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, REPO, kube_version

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FINALIZER = "llmtrain.io/operator"
FOREIGN = "example.com/keep"


def hook_rbac(cluster: Any, release: str, namespace: str, *sets: str) -> tuple[str, Path]:
    """Apply the hook's ServiceAccount and RBAC as `helm template` renders them; return the
    ServiceAccount's name and a kubeconfig for it, once the apiserver honours the grant."""
    args = [
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version(),
    ]
    for s in sets:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(cluster.helm(*args)) if d]
    hook = [
        d
        for d in docs
        if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "cleanup"
        and d["kind"] != "Job"
    ]
    assert {d["kind"] for d in hook} >= {"ServiceAccount"}, hook
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": hook})
    )
    sa = next(d["metadata"]["name"] for d in hook if d["kind"] == "ServiceAccount")
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == sa
    return sa, cluster.kubeconfig_for_sa(namespace, sa)


def llmtrain(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env.update(
        KUBECONFIG=str(kubeconfig), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost"
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "llmtrain"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def make_job(cluster: Any, ns: str, name: str, finalizers: list[str]) -> None:
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns, "finalizers": finalizers}
    cluster.kubectl("create", "-f", "-", input=json.dumps(doc))


def finalizers(cluster: Any, ns: str, name: str) -> list[str] | None:
    out = cluster.kubectl("get", "llmtj", name, "-n", ns, "-o", "json", "--ignore-not-found")
    if not out.strip():
        return None  # gone
    got: list[str] = json.loads(out)["metadata"].get("finalizers", [])
    return got


def wait_granted(cluster: Any, sa: str, verb: str, where: list[str]) -> None:
    cluster.wait_for(
        f"{sa} may {verb} llmtrainingjobs",
        lambda: (
            cluster.kubectl(
                "auth",
                "can-i",
                verb,
                "llmtrainingjobs.llmtrain.io",
                f"--as={sa}",
                *where,
                check=False,
            ).strip()
            == "yes"
        ),
        timeout=60,
    )


def test_cleanup_releases_jobs_and_their_namespace(cluster: Any, llmtj_crd: dict[str, Any]) -> None:
    suffix = uuid.uuid4().hex[:6]
    sys_ns, ns, other_ns = f"lt-usys-{suffix}", f"lt-ujob-{suffix}", f"lt-uoth-{suffix}"
    for n in (sys_ns, ns, other_ns):
        cluster.create_namespace(n)
    sa, kubeconfig = hook_rbac(cluster, f"lu{suffix}", sys_ns)
    wait_granted(cluster, f"system:serviceaccount:{sys_ns}:{sa}", "patch", ["-A"])
    make_job(cluster, ns, "stuck", [FINALIZER])
    make_job(cluster, ns, "shared", [FOREIGN, FINALIZER])
    make_job(cluster, other_ns, "elsewhere", [FINALIZER])
    make_job(cluster, other_ns, "untouched", [FOREIGN])

    # Without the operator, deleting hangs: the job stays, marked for deletion.
    cluster.kubectl("delete", "llmtj", "stuck", "-n", ns, "--wait=false")
    time.sleep(2)
    job = json.loads(cluster.kubectl("get", "llmtj", "stuck", "-n", ns, "-o", "json"))
    assert job["metadata"]["deletionTimestamp"] and job["metadata"]["finalizers"] == [FINALIZER]
    # ... and the namespace with it.
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    time.sleep(3)
    assert (
        json.loads(cluster.kubectl("get", "namespace", ns, "-o", "json"))["status"]["phase"]
        == "Terminating"
    )

    # The hook's command, as the hook's ServiceAccount: every namespace (all-namespaces mode).
    proc = llmtrain("cleanup", kubeconfig=kubeconfig)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removed llmtrain.io/operator from 3 job(s)" in proc.stdout, proc.stdout
    for name in (f"{ns}/stuck", f"{ns}/shared", f"{other_ns}/elsewhere"):
        assert f"released {name}" in proc.stdout

    cluster.wait_for(
        "the stuck job is gone", lambda: finalizers(cluster, ns, "stuck") is None, timeout=30
    )
    # Other controllers' finalizers stay; ours is gone everywhere.
    assert finalizers(cluster, other_ns, "elsewhere") == []
    assert finalizers(cluster, other_ns, "untouched") == [FOREIGN]
    shared = finalizers(cluster, ns, "shared")
    assert shared in ([FOREIGN], None), shared  # its namespace may be taking it already
    # That one is ours to release here (the test is its "controller"): then the namespace goes.
    cluster.kubectl(
        "patch",
        "llmtj",
        "shared",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
        check=False,
    )
    cluster.wait_for(
        f"namespace {ns} deleted",
        lambda: (
            not cluster.kubectl("get", "namespace", ns, "--ignore-not-found", "-o", "name").strip()
        ),
        timeout=90,
    )

    # Nothing left to do: a second run changes nothing and says so.
    again = llmtrain("cleanup", kubeconfig=kubeconfig)
    assert again.returncode == 0 and "from 0 job(s)" in again.stdout, again.stdout
    cluster.kubectl(
        "patch",
        "llmtj",
        "untouched",
        "-n",
        other_ns,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    cluster.kubectl("delete", "namespace", other_ns, sys_ns, "--wait=false")


def test_namespaced_hook_reaches_only_the_watched_namespaces(
    cluster: Any, llmtj_crd: dict[str, Any]
) -> None:
    suffix = uuid.uuid4().hex[:6]
    sys_ns, team, other = f"lt-usys-{suffix}", f"lt-uteam-{suffix}", f"lt-uoth-{suffix}"
    for n in (sys_ns, team, other):
        cluster.create_namespace(n)
    sa, kubeconfig = hook_rbac(
        cluster, f"lu{suffix}", sys_ns, "watch.allNamespaces=false", f"watch.namespaces={{{team}}}"
    )
    wait_granted(cluster, f"system:serviceaccount:{sys_ns}:{sa}", "patch", ["-n", team])
    make_job(cluster, team, "mine", [FINALIZER])
    make_job(cluster, other, "theirs", [FINALIZER])

    # The Job's arguments in this mode: the watched namespaces only.
    proc = llmtrain("cleanup", "--namespace", team, kubeconfig=kubeconfig)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert finalizers(cluster, team, "mine") == []
    assert finalizers(cluster, other, "theirs") == [FINALIZER]
    # Least privilege: nothing outside them, and the refusal is an error, not a silent 0.
    denied = llmtrain("cleanup", kubeconfig=kubeconfig)
    assert denied.returncode == 1 and "cannot list LLMTrainingJobs: 403" in denied.stderr, (
        denied.stdout + denied.stderr
    )
    cluster.kubectl(
        "patch",
        "llmtj",
        "theirs",
        "-n",
        other,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    cluster.kubectl("delete", "namespace", team, other, sys_ns, "--wait=false")
