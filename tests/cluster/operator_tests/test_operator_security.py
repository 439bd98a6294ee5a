"""An LLMTrainingJob is not a way around pod rights, nor a way to lose or adopt pods.

    pytest -m cluster tests/cluster/operator_tests/test_operator_security.py

A user who may create jobs but not pods tries to get a privileged, host-mounting pod under
another ServiceAccount through `podTemplate`; the apiserver refuses each attempt, and what it
accepts the operator turns into restricted pods. Jobs deleted and created again under the
same name never adopt the old pods; pods that cannot start say why.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import controlplane
from tests.cluster.operator_tests.harness import Harness, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ESCALATIONS = {
    "hostPID": {"spec": {"hostPID": True}},
    "hostPath": {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
    "serviceAccountName": {"spec": {"serviceAccountName": "admin"}},
    "automountServiceAccountToken": {"spec": {"automountServiceAccountToken": True}},
    "securityContext": {"spec": {"securityContext": {"runAsUser": 0}}},
    "containers[0].securityContext": {
        "spec": {
            "containers": [
                {"name": "side", "image": "busybox", "securityContext": {"privileged": True}}
            ]
        }
    },
    "serviceAccountToken": {
        "spec": {
            "volumes": [
                {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
            ]
        }
    },
}


def job_only_user(h: Harness) -> Any:
    """A ServiceAccount that may create LLMTrainingJobs and nothing else; its kubeconfig."""
    rbac = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "alice", "namespace": h.ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "jobs-only", "namespace": h.ns},
            "rules": [
                {
                    "apiGroups": ["llmtrain.io"],
                    "resources": ["llmtrainingjobs"],
                    "verbs": ["get", "list", "create", "patch", "delete"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "alice-jobs", "namespace": h.ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "jobs-only",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": h.ns}],
        },
    ]
    h.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac})
    )
    who = f"system:serviceaccount:{h.ns}:alice"
    wait_until(
        "alice's grant",
        lambda: (
            h.cluster.kubectl(
                "auth",
                "can-i",
                "create",
                "llmtrainingjobs.llmtrain.io",
                "-n",
                h.ns,
                "--as",
                who,
                check=False,
            ).strip()
            == "yes"
        ),
    )
    assert (
        h.cluster.kubectl(
            "auth", "can-i", "create", "pods", "-n", h.ns, "--as", who, check=False
        ).strip()
        == "no"
    )
    return h.cluster.kubeconfig_for_sa(h.ns, "alice")


def test_a_job_only_user_gets_no_pod_beyond_the_restricted_one(
    start_operator: Any, h: Harness
) -> None:
    start_operator("--standalone")
    alice = job_only_user(h)
    for field, template in ESCALATIONS.items():
        body = h.job_manifest("escalate", stages=("sft",), workers=1)
        body["spec"]["resources"]["podTemplate"] = template
        with pytest.raises(controlplane.KubectlError) as refused:
            h.cluster.kubectl("apply", "-f", "-", input=json.dumps(body), kubeconfig=alice)
        assert field in refused.value.stderr, (field, refused.value.stderr)
    assert not h.cluster.kubectl("get", "llmtj", "-n", h.ns, "-o", "name")

    # What a job may add, it gets, inside the restricted profile the namespace enforces.
    body = h.job_manifest("allowed", stages=("sft",), workers=2)
    body["spec"]["resources"]["podTemplate"] = {
        "metadata": {"labels": {"team": "nlp"}},
        "spec": {
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                {"name": "trainer", "volumeMounts": [{"name": "scratch", "mountPath": "/x"}]},
                {"name": "shipper", "image": "busybox:1.36", "command": ["sleep", "1d"]},
            ],
        },
    }
    h.cluster.kubectl("apply", "-f", "-", input=json.dumps(body), kubeconfig=alice)
    h.wait_pods({"allowed-sft-a1-0", "allowed-sft-a1-1"})
    for pod in h.pods("llmtrain.io/job=allowed").values():
        spec = pod["spec"]
        assert pod["metadata"]["labels"]["team"] == "nlp"
        assert spec["serviceAccountName"] == "default"
        assert spec["automountServiceAccountToken"] is False
        assert not any(k in spec for k in ("hostPID", "hostNetwork", "hostIPC"))
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert [c["name"] for c in spec["containers"]] == ["trainer", "shipper"]
        assert not any(
            "projected" in v and v["name"].startswith("kube-api-access") for v in spec["volumes"]
        )  # no token volume was injected


def test_a_deleted_job_leaves_no_pods_and_its_namesake_adopts_none(
    start_operator: Any, h: Harness
) -> None:
    """A podTemplate without metadata once cost the pods their ownerReference."""
    start_operator("--standalone")
    body = h.job_manifest("again", stages=("sft",))
    body["spec"]["resources"]["podTemplate"] = {"spec": {"imagePullSecrets": [{"name": "r"}]}}
    h.apply(body)
    h.wait_pods({"again-sft-a1-0", "again-sft-a1-1"})
    first_uid = h.job("again")["metadata"]["uid"]
    owners = {p["metadata"]["ownerReferences"][0]["uid"] for p in h.pods().values()}
    assert owners == {first_uid}
    h.cluster.kubectl("delete", "llmtj", "again", "-n", h.ns)
    h.wait_gone({"again-sft-a1-0", "again-sft-a1-1"}, timeout=60)  # garbage-collected

    # A pod of the same name that is not the job's (no owner): never adopted, and said so.
    orphan = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "again-sft-a1-0",
            "namespace": h.ns,
            "labels": {
                "llmtrain.io/job": "again",
                "llmtrain.io/stage": "sft",
                "llmtrain.io/attempt": "1",
                "llmtrain.io/rank": "0",
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": "old/config",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                }
            ]
        },
    }
    h.cluster.kubectl("apply", "-f", "-", input=json.dumps(orphan))
    h.apply(h.job_manifest("again", stages=("sft",)))
    refused = wait_until(
        "CreateFailed",
        lambda: (c := h.condition("again", "CreateFailed")) and c["status"] == "True" and c,
    )
    assert "again-sft-a1-0 exists and is not owned by this job" in refused["message"]
    time.sleep(3)
    assert h.status("again")["phase"] in ("Pending", "Initializing")
    assert h.pods()["again-sft-a1-0"]["spec"]["containers"][0]["image"] == "old/config"
    h.cluster.kubectl("delete", "pod", "again-sft-a1-0", "-n", h.ns, "--wait=false")
    h.wait_phase("again", "Running", timeout=40)
    new_uid = h.job("again")["metadata"]["uid"]
    assert {
        p["metadata"]["ownerReferences"][0]["uid"] for p in h.pods("llmtrain.io/job=again").values()
    } == {new_uid}


def test_pods_that_cannot_start_say_why(start_operator: Any, h: Harness) -> None:
    start_operator("--standalone")
    h.apply(h.job_manifest("unbound", stages=("sft",), storage={"pvc": {"claimName": "nope"}}))
    pending = wait_until(
        "PodsPending",
        lambda: (c := h.condition("unbound", "PodsPending")) and c["status"] == "True" and c,
    )
    assert pending["reason"] == "Unschedulable"
    assert 'persistentvolumeclaim "nope" not found' in pending["message"] or (
        "PersistentVolumeClaim" in pending["message"]
    ), pending
    st = h.status("unbound")
    assert st["phase"] == "Initializing" and st.get("reason") == "Unschedulable"
    assert "startTime" in st  # the pods exist: the deadline clock runs from their creation
    time.sleep(3)
    reasons = [e["reason"] for e in h.events("unbound")]
    assert reasons.count("Unschedulable") == 1, reasons
    columns = h.table("unbound", "-o", "wide")
    assert columns["REASON"] == "Unschedulable"


def test_network_policy_per_attempt(start_operator: Any, h: Harness) -> None:
    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    start_operator("--standalone", "--network-policy", "--metrics-from", json.dumps([prom]))
    h.apply(h.job_manifest("fenced", stages=("sft",)))
    h.wait_phase("fenced", "Running")
    policy = h.cluster.get("networkpolicy", "fenced-sft-a1", h.ns)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == h.job("fenced")["metadata"]["uid"]
    assert policy["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"llmtrain.io/job": "fenced"}}}
    ]
    assert policy["spec"]["ingress"][1]["from"] == [prom]
    h.end_pod("fenced-sft-a1-1", "Failed", exit_code=75)
    h.wait_pods({"fenced-sft-a2-0", "fenced-sft-a2-1"})
    wait_until(
        "the old attempt's policy gone",
        lambda: (
            "fenced-sft-a1"
            not in h.cluster.kubectl("get", "networkpolicy", "-n", h.ns, "-o", "name")
        ),
    )
    assert h.cluster.get("networkpolicy", "fenced-sft-a2", h.ns)
