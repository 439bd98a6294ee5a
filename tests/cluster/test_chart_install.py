"""The Helm chart installed into the real control plane (tests/controlplane).

    pytest -m cluster tests/cluster/test_chart_install.py

Every rendered object must be accepted by the apiserver, the monitoring objects against the
real prometheus-operator CRDs (tests/chart/fixtures/), and the operator pods must pass the
`restricted` Pod Security admission. RBAC is checked with SubjectAccessReviews
(`kubectl auth can-i --as`), and - in test_operator_lifecycle_under_chart_rbac - by running
the real `llmtrain operator` with the chart's ServiceAccount token.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.chart.chart import apply_monitoring_crds, install, manifest, render

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _ns(cluster: Any, prefix: str, restricted: bool = False) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(name)
    if restricted:
        cluster.kubectl(
            "label",
            "namespace",
            name,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        )
    return name


def _release() -> str:
    return f"lt{uuid.uuid4().hex[:6]}"


def _exists(cluster: Any, obj: dict[str, Any], default_ns: str) -> bool:
    kind, meta = obj["kind"], obj["metadata"]
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    resource = f"{kind.lower()}.{group}" if group and group not in ("v1",) else kind.lower()
    scoped = [] if kind in _CLUSTER_KINDS else ["-n", meta.get("namespace", default_ns)]
    out = cluster.kubectl("get", resource, meta["name"], *scoped, "-o", "json", check=False)
    return bool(out) and json.loads(out)["metadata"]["name"] == meta["name"]


_CLUSTER_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "Namespace",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def can_i(cluster: Any, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    out = cluster.kubectl("auth", "can-i", verb, resource, f"--as={sa}", *where, check=False)
    return out.strip() == "yes"


def _operator_pods(cluster: Any, namespace: str, release: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get",
        "pods",
        "-n",
        namespace,
        "-o",
        "json",
        "-l",
        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator",
    )
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return pods


def _rs_events(cluster: Any, namespace: str) -> str:
    out: str = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
        check=False,
    )
    return out


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Any) -> None:
    apply_monitoring_crds(cluster)


def test_install_defaults_every_object_is_accepted(cluster: Any, monitoring_crds: None) -> None:
    ns, release = _ns(cluster, "lt-sys", restricted=True), _release()
    peering = f"p-{release}"
    notes = install(
        cluster, release, ns, "defaults-values.yaml", f"operator.peering.name={peering}"
    )
    assert "1. Check that the operator is up" in notes
    objects = manifest(cluster, release, ns)
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "ClusterRole",
        "ClusterKopfPeering",
        "ServiceAccount",
        "Service",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    } <= kinds
    missing = [
        f"{o['kind']}/{o['metadata']['name']}" for o in objects if not _exists(cluster, o, ns)
    ]
    assert missing == []
    assert cluster.get("crd", "llmtrainingjobs.llmtrain.io")
    assert cluster.get("crd", "clusterkopfpeerings.kopf.dev")

    # Pod Security `restricted` admitted the operator's pods (kwok runs them on fake nodes).
    dep = f"{release}-llmtrain-operator"
    cluster.wait_for(
        f"2 operator pods in {ns}",
        lambda: len(_operator_pods(cluster, ns, release)) == 2,
        timeout=60,
    )
    assert "FailedCreate" not in _rs_events(cluster, ns)
    # ... and the namespace really enforces it: a pod without a security context is refused.
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    with pytest.raises(Exception, match="violates PodSecurity"):
        cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(bare))
    pods = _operator_pods(cluster, ns, release)
    assert all(p["spec"]["serviceAccountName"] == dep for p in pods)

    # RBAC as the apiserver evaluates it.
    sa = f"system:serviceaccount:{ns}:{dep}"
    for verb, resource in [
        ("watch", "llmtrainingjobs.llmtrain.io"),
        ("patch", "llmtrainingjobs.llmtrain.io/status"),
        ("delete", "llmtrainingjobs.llmtrain.io"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "configmaps"),
        ("create", "services"),
        ("create", "events"),
        ("create", "events.events.k8s.io"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "namespaces"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io"),
    ]:
        assert can_i(cluster, sa, verb, resource, None), (verb, resource)
    # PATCH only, never PUT; pods are never changed; nothing beyond the lifecycle.
    for verb, resource in [
        ("get", "secrets"),
        ("create", "llmtrainingjobs.llmtrain.io"),
        ("create", "deployments.apps"),
        ("update", "pods"),
        ("patch", "pods"),
        ("update", "llmtrainingjobs.llmtrain.io"),
        ("update", "llmtrainingjobs.llmtrain.io/status"),
        ("update", "networkpolicies.networking.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ]:
        assert not can_i(cluster, sa, verb, resource, None), (verb, resource)

    # Job pods run as each namespace's `default`, which the chart binds to nothing.
    assert not [
        o
        for o in objects
        if o["kind"] == "ServiceAccount"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    job_ns = _ns(cluster, "lt-jobs")
    worker = f"system:serviceaccount:{job_ns}:default"
    for verb, resource in [
        ("get", "pods"),
        ("list", "llmtrainingjobs.llmtrain.io"),
        ("get", "configmaps"),
        ("get", "secrets"),
    ]:
        assert not can_i(cluster, worker, verb, resource, job_ns), (verb, resource)

    # Aggregation: the built-in edit/view roles now cover LLMTrainingJobs.
    user_ns = _ns(cluster, "lt-user")
    cluster.kubectl(
        "create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", user_ns
    )
    cluster.kubectl(
        "create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", user_ns
    )
    cluster.wait_for(
        "edit aggregates llmtrainingjobs",
        lambda: can_i(cluster, "alice", "create", "llmtrainingjobs.llmtrain.io", user_ns),
        timeout=30,
    )
    assert can_i(cluster, "bob", "list", "llmtrainingjobs.llmtrain.io", user_ns)
    assert not can_i(cluster, "bob", "create", "llmtrainingjobs.llmtrain.io", user_ns)

    cluster.helm("uninstall", release, "--namespace", ns, "--wait", timeout=180)
    assert not cluster.kubectl("get", "clusterrole", f"{dep}", check=False)
    # The post-delete hook ran (kwok completes Job pods) and was deleted with its RBAC.
    assert not cluster.kubectl("get", "clusterrole", f"{release}-llmtrain-cleanup", check=False)
    assert not cluster.kubectl(
        "get",
        "jobs,serviceaccounts",
        "-n",
        ns,
        "-o",
        "name",
        "-l",
        "app.kubernetes.io/component=cleanup",
    ).strip()


def test_install_namespaced_mode(cluster: Any, monitoring_crds: None) -> None:
    ns, release = _ns(cluster, "lt-sys"), _release()
    team_a, team_b, other = _ns(cluster, "lt-a"), _ns(cluster, "lt-b"), _ns(cluster, "lt-o")
    install(
        cluster,
        release,
        ns,
        "namespaced-values.yaml",
        f"watch.namespaces={{{team_a},{team_b}}}",
        # the ci scenario pins the operator to control-plane nodes; kwok has none
        "operator.nodeSelector=null",
        "operator.tolerations=null",
    )
    objects = manifest(cluster, release, ns)
    missing = [
        f"{o['kind']}/{o['metadata'].get('namespace')}/{o['metadata']['name']}"
        for o in objects
        if not _exists(cluster, o, ns)
    ]
    assert missing == []
    # Jobs' NetworkPolicies come from the operator; the chart polices only its own pods.
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] == "NetworkPolicy"} == {ns}
    # The worker ServiceAccount the scenario asks the chart for, in each watched namespace.
    workers = [
        o
        for o in objects
        if o["kind"] == "ServiceAccount"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert sorted(w["metadata"]["namespace"] for w in workers) == sorted([team_a, team_b])
    sa = f"system:serviceaccount:{ns}:{release}-llmtrain-operator"
    for team in (team_a, team_b):
        assert can_i(cluster, sa, "create", "pods", team)
        assert can_i(cluster, sa, "patch", "kopfpeerings.kopf.dev", team)
        assert cluster.get("kopfpeering", "llmtrain", team)
    assert not can_i(cluster, sa, "create", "pods", other)
    assert not can_i(cluster, sa, "list", "llmtrainingjobs.llmtrain.io", None)  # cluster-wide
    assert can_i(cluster, sa, "list", "namespaces", None)  # kopf observes them
    assert can_i(cluster, sa, "list", "customresourcedefinitions.apiextensions.k8s.io", None)
    cluster.wait_for(
        "3 operator pods", lambda: len(_operator_pods(cluster, ns, release)) == 3, timeout=60
    )
    cluster.helm("uninstall", release, "--namespace", ns, "--wait", timeout=180)
    # The hook's Roles lived in the watched namespaces, and went with it.
    for team in (team_a, team_b):
        assert not cluster.kubectl(
            "get",
            "roles,rolebindings",
            "-n",
            team,
            "-o",
            "name",
            "-l",
            "app.kubernetes.io/component=cleanup",
        ).strip()


@pytest.mark.parametrize("scenario", ["monitoring-off-values.yaml", "minimal-values.yaml"])
def test_install_without_optional_parts(cluster: Any, scenario: str) -> None:
    """Nothing needs the prometheus-operator CRDs with monitoring off, and the chart still
    installs with every optional part off (a bare cluster's install with the defaults is
    tests/cluster/test_chart_first_install.py)."""
    ns, release = _ns(cluster, "lt-sys"), _release()
    rendered = render(scenario)
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & {d["kind"] for d in rendered}
    install(cluster, release, ns, scenario)
    objects = manifest(cluster, release, ns)
    assert [o for o in objects if not _exists(cluster, o, ns)] == []
    cluster.helm("uninstall", release, "--namespace", ns, "--wait", timeout=180)
