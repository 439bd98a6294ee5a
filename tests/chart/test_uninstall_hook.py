"""The uninstall hook, rendered: a post-delete Job running `llmtrain cleanup` with its own
ServiceAccount and RBAC, all of it deleted once it ran; and the finalizer patch it sends.

    pytest tests/chart/test_uninstall_hook.py

tests/cluster/test_chart_uninstall.py runs the command as the hook's ServiceAccount on the
real control plane.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer

from llmtrain.cli.main import app
from llmtrain.operator import uninstall
from llmtrain.operator.handlers import FINALIZER
from tests.chart.chart import NAMESPACE, find, find_all, render
from tests.chart.test_chart_render import rules_of

HOOK = "helm.sh/hook"
POLICY = "helm.sh/hook-delete-policy"


def hook_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if HOOK in (d["metadata"].get("annotations") or {})]


def test_hook_is_post_delete_and_leaves_nothing() -> None:
    docs = render()
    hooks = hook_objects(docs)
    assert sorted(d["kind"] for d in hooks) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
        "ServiceAccount",
    ]
    weights = {}
    for d in hooks:
        ann = d["metadata"]["annotations"]
        # After the operator and its RBAC are gone: before, it would re-add its finalizer.
        assert ann[HOOK] == "post-delete", d["kind"]
        assert set(ann[POLICY].split(",")) == {
            "before-hook-creation",
            "hook-succeeded",
            "hook-failed",
        }, d["kind"]
        assert d["metadata"]["labels"]["app.kubernetes.io/component"] == "cleanup"
        weights[d["kind"]] = int(ann["helm.sh/hook-weight"])
    # Its ServiceAccount and RBAC exist before the Job starts.
    assert max(v for k, v in weights.items() if k != "Job") < weights["Job"]
    assert (
        find(docs, "Job")["metadata"]["annotations"]["helm.sh/hook-output-log-policy"]
        == "hook-failed"
    )


def test_hook_runs_cleanup_with_the_operator_image_and_least_privilege() -> None:
    docs = render()
    job = find(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert (
        c["image"] == find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert c["command"] == ["llmtrain", "cleanup"] and "args" not in c  # every namespace
    assert "cleanup" in typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert pod["serviceAccountName"] == "llmtrain-cleanup"
    assert pod["restartPolicy"] == "Never"
    # `restricted` Pod Security, like the operator's pods (the release namespace may enforce it).
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    role = find(docs, "ClusterRole", "llmtrain-cleanup")
    assert rules_of(role) == {("llmtrain.io", "llmtrainingjobs"): {"get", "list", "patch"}}
    binding = find(docs, "ClusterRoleBinding", "llmtrain-cleanup")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmtrain-cleanup", "namespace": NAMESPACE}
    ]
    sa = find(docs, "ServiceAccount", "llmtrain-cleanup")
    assert sa["metadata"]["namespace"] == NAMESPACE


def test_namespaced_hook_cleans_only_the_watched_namespaces() -> None:
    docs = render("namespaced-values.yaml")
    c = find(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["--namespace=team-a", "--namespace=team-b"]
    roles = find_all(docs, "Role", "llmtrain-cleanup")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(
        rules_of(r) == {("llmtrain.io", "llmtrainingjobs"): {"get", "list", "patch"}} for r in roles
    )
    assert find_all(docs, "ClusterRole", "llmtrain-cleanup") == []
    # Same scheduling and pull secrets as the operator.
    pod = find(docs, "Job")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}


def test_hook_off() -> None:
    assert hook_objects(render(None, "uninstall.removeFinalizers=false")) == []


# ---- the patch `llmtrain cleanup` sends ---------------------------------------------------


def test_finalizer_is_the_operators() -> None:
    assert uninstall.FINALIZER == FINALIZER == "llmtrain.io/operator"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([FINALIZER], []),
        (["a.example/keep", FINALIZER, "b.example/keep"], ["a.example/keep", "b.example/keep"]),
        ([FINALIZER, FINALIZER], []),
    ],
)
def test_patch_drops_ours_and_keeps_the_rest(before: list[str], after: list[str]) -> None:
    job = {
        "metadata": {"name": "j", "namespace": "n", "finalizers": before, "resourceVersion": "42"}
    }
    assert uninstall.finalizer_patch(job) == {
        "metadata": {"finalizers": after, "resourceVersion": "42"}
    }


@pytest.mark.parametrize("finalizers", [None, [], ["other.example/keep"]])
def test_no_patch_without_our_finalizer(finalizers: list[str] | None) -> None:
    assert uninstall.finalizer_patch({"metadata": {"finalizers": finalizers}}) is None
