"""The chart's ValidatingAdmissionPolicy on the real apiserver, as the operator's own token.

    pytest -m cluster tests/cluster/test_chart_admission.py

The operator's ServiceAccount may create pods in every namespace (its RBAC); the policy is
what stops it, compromised or buggy, from creating any pod but a job pod. Requests are
server-side dry runs, so they pass authentication, RBAC and every admission plugin (the
ServiceAccount plugin fills in `default`, Pod Security, the policy) without creating
anything. Pods exactly as the operator builds them (`llmtrain render`) are admitted.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import REPO, install, manifest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JOB_LABEL = "llmtrain.io/job"
Pod = dict[str, Any]


def quickstart_on_a_cluster(tmp: Path) -> Path:
    """examples/quickstart.yaml as its header says to run it on a cluster: its data copied
    into the job's storage (a PersistentVolumeClaim) and the paths pointing there."""
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    spec = doc["spec"]
    spec["storage"] = {"pvc": {"claimName": "llm-checkpoints"}}
    spec["model"]["tokenizer"]["source"] = "/storage/quickstart/tokenizer"
    for stage in spec["stages"]:
        stage["dataset"]["source"] = "/storage/" + stage["dataset"]["source"]
    path = tmp / "quickstart.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def render(tmp: Path, namespace: str) -> list[dict[str, Any]]:
    """What `llmtrain render` prints for the quickstart, the ConfigMap, Service and pods
    the operator creates for its first stage (chart defaults), moved into `namespace`."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "llmtrain"),
            "render",
            str(quickstart_on_a_cluster(tmp)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [d for d in docs if d["kind"] == "Pod"], proc.stdout
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return docs


def good_pod(tmp: Path, namespace: str) -> Pod:
    return next(d for d in render(tmp, namespace) if d["kind"] == "Pod")


def create(cluster: Any, obj: dict[str, Any], kubeconfig: Path | None) -> str:
    """Server-side dry-run create; '' when admitted, else the apiserver's message."""
    proc = subprocess.run(
        [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or cluster.kubeconfig}",
            "create",
            "--dry-run=server",
            "-o",
            "name",
            "-f",
            "-",
        ],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "" if proc.returncode == 0 else proc.stderr


@pytest.fixture(scope="module")
def release(
    cluster: Any, llmtj_crd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The chart with its defaults and the operator's kubeconfig; a namespace enforcing the
    `restricted` Pod Security Standard, and one enforcing nothing, where only the policy
    stands between the operator and a bad pod."""
    suffix = uuid.uuid4().hex[:6]
    sys_ns, job_ns, name = f"lt-vsys-{suffix}", f"lt-vjob-{suffix}", f"lv{suffix}"
    open_ns = f"lt-vopen-{suffix}"
    cluster.create_namespace(sys_ns)
    cluster.create_namespace(job_ns)
    cluster.create_namespace(open_ns)
    cluster.kubectl(
        "label",
        "namespace",
        job_ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    install(
        cluster,
        name,
        sys_ns,
        "defaults-values.yaml",
        f"operator.peering.name=p-{name}",
        "operator.replicas=1",
    )
    docs = manifest(cluster, name, sys_ns)
    sa = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "serviceAccountName"
    ]
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    # Another ServiceAccount, in kube-system: pods run as it only if someone may.
    other = f"other-{suffix}"
    cluster.kubectl("create", "serviceaccount", other, "-n", "kube-system")
    out = {
        "name": name,
        "sys_ns": sys_ns,
        "job_ns": job_ns,
        "open_ns": open_ns,
        "policy": policy["metadata"]["name"],
        "kubeconfig": cluster.kubeconfig_for_sa(sys_ns, sa),
        "other_sa": other,
    }
    # RBAC grants and policies reach the apiserver's caches asynchronously: wait until a
    # privileged pod is refused *by the policy* (until then it would be admitted).
    bad = good_pod(tmp_path_factory.mktemp("render"), open_ns)
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    cluster.wait_for(
        "the policy in force",
        lambda: out["policy"] in create(cluster, bad, out["kubeconfig"]),
        timeout=60,
    )
    yield out
    cluster.kubectl("delete", "serviceaccount", other, "-n", "kube-system", check=False)
    cluster.helm("uninstall", name, "--namespace", sys_ns, "--wait", timeout=180)


def test_policy_type_checks_against_the_pod_schema(cluster: Any, release: dict[str, Any]) -> None:
    """A CEL expression naming a field pods do not have shows up only as a warning in the
    policy's status: there must be none."""

    def status() -> dict[str, Any]:
        got: dict[str, Any] = (
            cluster.get("validatingadmissionpolicy", release["policy"]).get("status") or {}
        )
        return got

    cluster.wait_for("type checking", lambda: "typeChecking" in status(), timeout=60)
    assert status()["typeChecking"].get("expressionWarnings", []) == []


def test_pods_as_the_operator_builds_them_are_admitted(
    cluster: Any, release: dict[str, Any], tmp_path: Path
) -> None:
    for d in render(tmp_path, release["job_ns"]):  # pods, their ConfigMap and Service
        if d["kind"] == "Pod":
            # The chart names no worker ServiceAccount: `default`, set or left to admission.
            assert d["spec"].get("serviceAccountName", "default") == "default"
        assert create(cluster, d, release["kubeconfig"]) == "", d["kind"]


def _container(p: Pod) -> dict[str, Any]:
    sc: dict[str, Any] = p["spec"]["containers"][0]["securityContext"]
    return sc


def _sidecar(p: Pod) -> None:
    side = copy.deepcopy(p["spec"]["containers"][0])
    side.update(name="sidecar", securityContext={"privileged": True})
    side.pop("ports", None)
    p["spec"]["containers"].append(side)


def _in_kube_system_as(sa: str) -> Callable[[Pod], None]:
    def change(p: Pod) -> None:
        p["metadata"]["namespace"] = "kube-system"
        p["spec"]["serviceAccountName"] = sa

    return change


# name: (a change to a good pod, part of the policy's message refusing it)
MUTATIONS: dict[str, tuple[Callable[[Pod], Any], str]] = {
    "another ServiceAccount in kube-system": (
        lambda p: None,
        "must run as ServiceAccount default",
    ),  # change set per test
    # (privileged with allowPrivilegeEscalation false is invalid before admission)
    "privileged": (
        lambda p: _container(p).update(privileged=True, allowPrivilegeEscalation=True),
        "privileged",
    ),
    "privileged sidecar": (_sidecar, "privileged"),
    "no job label": (lambda p: p["metadata"]["labels"].pop(JOB_LABEL), JOB_LABEL),
    "a token": (
        lambda p: p["spec"].update(automountServiceAccountToken=True),
        "must not mount a ServiceAccount token",
    ),
    "a projected token": (
        lambda p: p["spec"]["volumes"].append(
            {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
        ),
        "must not mount a ServiceAccount token",
    ),
    "hostPath": (
        lambda p: p["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        "no hostPath",
    ),
    "hostNetwork": (lambda p: p["spec"].update(hostNetwork=True), "hostNetwork"),
    "hostPID": (lambda p: p["spec"].update(hostPID=True), "hostPID"),
    "hostPort": (
        lambda p: p["spec"]["containers"][0]["ports"][0].update(hostPort=6379),
        "hostPort",
    ),
    "privilege escalation": (
        lambda p: _container(p).update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation",
    ),
    "a capability": (
        lambda p: _container(p).update(capabilities={"add": ["SYS_ADMIN"], "drop": ["ALL"]}),
        "drop ALL capabilities",
    ),
    "root": (lambda p: _container(p).update(runAsNonRoot=False, runAsUser=0), "runAsNonRoot"),
    "unconfined seccomp": (
        lambda p: _container(p).update(seccompProfile={"type": "Unconfined"}),
        "seccomp",
    ),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_anything_else_is_refused_to_the_operator_only(
    cluster: Any, release: dict[str, Any], case: str, tmp_path: Path
) -> None:
    change, message = MUTATIONS[case]
    if case.startswith("another ServiceAccount"):
        change = _in_kube_system_as(release["other_sa"])
    pod = good_pod(tmp_path, release["open_ns"])  # no Pod Security there: only the policy
    change(pod)
    refused = create(cluster, pod, release["kubeconfig"])
    assert release["policy"] in refused and message in refused, refused
    # The policy matches the operator's requests only: cluster-admin may.
    assert create(cluster, pod, None) == ""


def test_the_operator_may_not_change_pods(
    cluster: Any, release: dict[str, Any], tmp_path: Path
) -> None:
    """No pods patch/update in its RBAC (and the policy would refuse an update too)."""
    ns, name = release["job_ns"], f"p-{uuid.uuid4().hex[:6]}"
    pod = good_pod(tmp_path, ns)
    pod["metadata"]["name"] = name
    cluster.kubectl("create", "-f", "-", input=json.dumps(pod))
    try:
        proc = subprocess.run(
            [
                str(cluster.bin_dir / "kubectl"),
                f"--kubeconfig={release['kubeconfig']}",
                "label",
                "pod",
                name,
                "-n",
                ns,
                "x=y",
                "--dry-run=server",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    finally:
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false", check=False)
