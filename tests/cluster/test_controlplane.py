"""The test control plane is a real Kubernetes: validation, RBAC, scheduling, GC, pod phases.

pytest -m cluster tests/cluster/test_controlplane.py
"""

from __future__ import annotations

import copy
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "llmtrain.io", "v1alpha1", "llmtrainingjobs"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
REPO = Path(__file__).resolve().parents[2]


def quickstart() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    return doc


def create_job(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def pod(name: str, gpus: int = 0) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": "trainer:test", "resources": {"limits": limits}}
            ],
            "restartPolicy": "Never",
        },
    }


def apply(cluster: Any, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    out = cluster.kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(obj))
    created: dict[str, Any] = json.loads(out)
    return created


def phase_of(cluster: Any, namespace: str, name: str) -> str:
    return str(cluster.get("pod", name, namespace).get("status", {}).get("phase"))


def test_components_report_their_versions(cluster: Any) -> None:
    server = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]
    assert server["gitVersion"].startswith("v1.") and server["minor"].isdigit(), server
    assert int(server["minor"]) >= 34
    assert "v3." in cluster.helm("version", "--short")


def test_kwok_nodes_advertise_gpus(cluster: Any) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == cluster.node_names
    for n in nodes:
        alloc = n["status"]["allocatable"]
        assert alloc["nvidia.com/gpu"] == "8" and alloc["cpu"] == "32", alloc
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert all(
            ipaddress.ip_address(a["address"]) in LOOPBACK
            for a in n["status"]["addresses"]
            if a["type"] == "InternalIP"
        )


def test_crd_is_established(llmtj_crd: dict[str, Any]) -> None:
    conditions = {c["type"]: c["status"] for c in llmtj_crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert llmtj_crd["status"]["acceptedNames"]["shortNames"] == ["llmtj"]


def test_valid_job_is_stored_and_read_back(
    api: Any, llmtj_crd: dict[str, Any], namespace: str
) -> None:
    body = quickstart()
    create_job(api, namespace, body)
    got = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"]
    )
    assert [s["name"] for s in got["spec"]["stages"]] == ["pretrain", "sft", "dpo"]
    assert got["spec"]["model"]["architecture"] == body["spec"]["model"]["architecture"]
    assert got["spec"]["resources"]["memory"] == "4Gi"


def _duplicate_stage(job: dict[str, Any]) -> None:
    job["spec"]["stages"][1]["name"] = job["spec"]["stages"][0]["name"]


def _unknown_type(job: dict[str, Any]) -> None:
    job["spec"]["stages"][0]["type"] = "rlhf"


def _dpo_on_sft(job: dict[str, Any]) -> None:
    job["spec"]["stages"][1]["dpo"] = {"beta": 0.1}


def _no_stages(job: dict[str, Any]) -> None:
    del job["spec"]["stages"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_unknown_type, 'spec.stages[0].type: Unsupported value: "rlhf"'),
        (_duplicate_stage, 'spec.stages[1]: Duplicate value: {"name":'),  # a list-map by name
        (_dpo_on_sft, "dpo is only allowed on dpo stages"),
        (_no_stages, "spec.stages: Required value"),
    ],
    ids=["type-not-in-enum", "duplicate-stage-names", "dpo-on-sft-cel", "no-stages"],
)
def test_invalid_job_is_rejected_by_the_apiserver(
    api: Any, llmtj_crd: dict[str, Any], namespace: str, mutate: Any, expected: str
) -> None:
    body = copy.deepcopy(quickstart())
    mutate(body)
    with pytest.raises(ApiException) as err:
        create_job(api, namespace, body)
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert expected in message


def test_serviceaccount_needs_a_rolebinding(cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    sa_api = cluster.api_client(cluster.kubeconfig_for_sa(namespace, "robot"))
    core = client.CoreV1Api(sa_api)
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(namespace)
    assert err.value.status == 403
    assert f"system:serviceaccount:{namespace}:robot" in json.loads(err.value.body)["message"]

    # The same token works once RBAC allows it: the 403 came from RBAC, not broken auth.
    cluster.kubectl(
        "create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "robot-reads-pods",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:robot",
        "-n",
        namespace,
    )
    cluster.wait_for("RBAC to allow the robot", lambda: _can_list(core, namespace), 10)
    sa_api.close()


def _can_list(core: Any, namespace: str) -> bool:
    try:
        core.list_namespaced_pod(namespace)
    except ApiException:
        return False
    return True


def test_gpu_pod_runs_on_a_kwok_node_with_a_loopback_ip(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, pod("gpu", gpus=1))
    cluster.wait_for("pod gpu Running", lambda: phase_of(cluster, namespace, "gpu") == "Running")
    got = cluster.get("pod", "gpu", namespace)
    assert got["spec"]["nodeName"] in cluster.node_names
    assert ipaddress.ip_address(got["status"]["podIP"]) in LOOPBACK
    assert ipaddress.ip_address(got["status"]["hostIP"]) in LOOPBACK


def test_unschedulable_gpu_request_stays_pending(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, pod("greedy", gpus=9))  # no node has more than 8
    cluster.wait_for(
        "the scheduler to give up on greedy",
        lambda: any(
            c["type"] == "PodScheduled" and c["reason"] == "Unschedulable"
            for c in cluster.get("pod", "greedy", namespace)["status"].get("conditions", [])
        ),
    )
    assert "nvidia.com/gpu" in cluster.kubectl("get", "events", "-n", namespace)


def _gone(cluster: Any, namespace: str, kind: str, name: str) -> bool:
    return (
        cluster.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
        == ""
    )


def _child_of(owner: dict[str, Any], name: str) -> dict[str, Any]:
    ref = {k: owner[k] for k in ("apiVersion", "kind")}
    ref |= {"name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": [ref]},
        "data": {"k": "v"},
    }


def test_deleting_a_configmap_owner_collects_its_child(cluster: Any, namespace: str) -> None:
    owner = apply(
        cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}
    )
    apply(cluster, namespace, _child_of(owner, "child"))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.wait_for("GC of child", lambda: _gone(cluster, namespace, "configmap", "child"), 90)


def test_deleting_a_job_collects_its_children(
    cluster: Any, api: Any, llmtj_crd: dict[str, Any], namespace: str
) -> None:
    job = create_job(api, namespace, quickstart())
    apply(cluster, namespace, _child_of(job, "quickstart-config"))
    cluster.kubectl("delete", "llmtj", "quickstart", "-n", namespace)
    # The GC picks up new CRDs on its 30s discovery resync, hence the long timeout.
    cluster.wait_for(
        "GC of quickstart-config",
        lambda: _gone(cluster, namespace, "configmap", "quickstart-config"),
        120,
    )


@pytest.mark.parametrize(("phase", "exit_code"), [("Succeeded", 0), ("Failed", 137)])
def test_pod_can_be_driven_to_a_terminal_phase(
    cluster: Any, namespace: str, phase: str, exit_code: int
) -> None:
    apply(cluster, namespace, pod("worker"))
    cluster.set_pod_phase(namespace, "worker", phase, exit_code=exit_code)
    time.sleep(3)  # give kwok a chance to overwrite it, if it were going to
    got = cluster.get("pod", "worker", namespace)
    assert got["status"]["phase"] == phase
    (status,) = got["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == exit_code
