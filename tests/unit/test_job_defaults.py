"""The operator's job defaults (`llmtrain operator --default-pvc / --driver-metrics-port /
--worker-service-account`, set by the Helm chart): what jobs get when they leave a field
unset, that their own settings win, and what a job shows when the apiserver refuses its pods.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtrain.operator import api, kube, layout, manifests, progress, reconcile
from llmtrain.operator.kube import ApiException
from llmtrain.operator.metrics import OperatorMetrics
from llmtrain.trainer.contract import StageConfig

DOC: dict[str, Any] = {
    "apiVersion": "llmtrain.io/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {"name": "chat", "namespace": "ml", "uid": "u1", "resourceVersion": "1"},
    "spec": {
        "model": {"source": "org/base"},
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset": {"source": "/storage/d.jsonl", "format": "messages"},
            }
        ],
        "resources": {"workers": 2, "gpusPerWorker": 1},
    },
}
SET = layout.JobDefaults(pvc="shared", metrics_port=9600, service_account="llm-worker")


def make(**spec: Any) -> api.LLMTrainingJob:
    doc = copy.deepcopy(DOC)
    doc["spec"].update(copy.deepcopy(spec))
    return api.parse_job(doc)


def storage(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's storage volume and the trainer's mount of it."""
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "storage")
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "storage")
    return vol, mount


def metrics_ports(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every place the driver's metrics port appears in an attempt's objects."""
    cm, svc, head = objs[0], objs[1], objs[2]
    svc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "metrics")
    return {
        "stage config": StageConfig.model_validate_json(cm["data"]["stage.json"]).metrics_port,
        "service": (svc_port["port"], svc_port["targetPort"]),
        "container": next(
            p["containerPort"]
            for p in head["spec"]["containers"][0]["ports"]
            if p["name"] == "metrics"
        ),
    }


# ---- storage -----------------------------------------------------------------------------


def test_default_pvc_mounts_as_if_the_job_named_the_claim() -> None:
    for spec_storage in ({}, {"mountPath": "/data"}):
        plain = make(storage=spec_storage) if spec_storage else make()
        named = make(storage={**spec_storage, "pvc": {"claimName": "shared"}})
        for rank in (0, 1):
            got = manifests.build_worker_pod(plain, "sft", 1, rank, SET)
            assert got == manifests.build_worker_pod(named, "sft", 1, rank, SET)
    vol, mount = storage(manifests.build_worker_pod(make(), "sft", 1, 1, SET))
    assert vol == {"name": "storage", "persistentVolumeClaim": {"claimName": "shared"}}
    assert mount == {"name": "storage", "mountPath": "/storage"}


def test_a_job_with_its_own_storage_keeps_it() -> None:
    own = make(storage={"pvc": {"claimName": "mine", "subPath": "runs"}})
    vol, mount = storage(manifests.build_worker_pod(own, "sft", 1, 0, SET))
    assert vol["persistentVolumeClaim"] == {"claimName": "mine"}
    assert mount["subPath"] == "runs"
    # An object store needs no shared volume: scratch space, no default claim.
    s3 = make(
        storage={"objectStore": {"uri": "s3://bucket/llm"}},
        resources={**DOC["spec"]["resources"], "workers": 1},  # a bucket serves one-pod gangs
    )
    assert storage(manifests.build_worker_pod(s3, "sft", 1, 0, SET))[0] == {
        "name": "storage",
        "emptyDir": {},
    }


def test_without_a_default_pvc_outputs_stay_in_the_pod() -> None:
    vol, _ = storage(manifests.build_worker_pod(make(), "sft", 1, 0))
    assert vol == {"name": "storage", "emptyDir": {}}


# ---- metrics port ------------------------------------------------------------------------


def test_default_metrics_port_is_used_everywhere_the_port_appears() -> None:
    objs = manifests.build_stage_objects(make(), "sft", 1, SET)
    assert metrics_ports(objs) == {"stage config": 9600, "service": (9600, 9600), "container": 9600}
    plain = manifests.build_stage_objects(make(), "sft", 1)
    assert metrics_ports(plain) == {
        "stage config": 9400,
        "service": (9400, 9400),
        "container": 9400,
    }


def test_a_job_with_its_own_metrics_port_keeps_it() -> None:
    # 9400 too: a job that asks for the built-in default by name keeps it.
    for port in (9500, 9400):
        objs = manifests.build_stage_objects(make(monitoring={"metricsPort": port}), "sft", 1, SET)
        assert metrics_ports(objs) == {
            "stage config": port,
            "service": (port, port),
            "container": port,
        }


def test_the_operator_scrapes_the_port_the_driver_serves(monkeypatch) -> None:
    asked: list[int] = []

    async def scrape(ip: str, port: int, timeout: float) -> tuple[dict[str, float], None]:
        asked.append(port)
        return {"llmtrain_train_step": 1.0}, None

    monkeypatch.setattr(reconcile.progress, "scrape", scrape)
    ctx = reconcile.Context(
        options=reconcile.Options(job_defaults=SET),
        kube=None,  # unused
        metrics=OperatorMetrics(),
    )
    head = progress.PodView("chat-sft-a1-0", "sft", 1, 0, phase="Running", ip="10.0.0.5")
    for job, port in ((make(), 9600), (make(monitoring={"metricsPort": 9500}), 9500)):
        job.status = api.LLMTrainingJobStatus(
            current_stage="sft", stages=[api.StageStatus(name="sft", phase="Running", attempt=1)]
        )
        assert asyncio.run(reconcile._scrape(ctx, job, [head])) is not None
        assert asked.pop() == port


# ---- service account ---------------------------------------------------------------------


def test_worker_pods_run_as_the_configured_service_account() -> None:
    for pod in manifests.build_stage_objects(make(), "sft", 1, SET)[2:]:
        assert pod["spec"]["serviceAccountName"] == "llm-worker"
        assert pod["spec"]["automountServiceAccountToken"] is False
    for pod in manifests.build_stage_objects(make(), "sft", 1)[2:]:
        assert pod["spec"]["serviceAccountName"] == "default"  # exists in every namespace
    # A job cannot pick its own: that would be a way to run as any account in the namespace.
    doc = copy.deepcopy(DOC)
    doc["spec"]["resources"]["podTemplate"] = {"spec": {"serviceAccountName": "team-sa"}}
    assert [str(p) for p in api.validate_job(doc)] == [
        "spec.resources.podTemplate.spec.serviceAccountName: unknown field"
    ]


# ---- llmtrain render ---------------------------------------------------------------------


def test_render_previews_the_operator_defaults_from_its_environment(root: Path) -> None:
    from tests.conftest import run_cli

    job = tmp_job(root)  # sets no storage, no port
    r = run_cli(
        "render",
        job,
        LLMTRAIN_DEFAULT_PVC="llm-checkpoints",
        LLMTRAIN_METRICS_PORT="9600",
        LLMTRAIN_WORKER_SERVICE_ACCOUNT="llm-worker",
    )
    assert r.returncode == 0, r.stderr
    objs = list(yaml.safe_load_all(r.stdout))
    pod = objs[2]
    assert storage(pod)[0]["persistentVolumeClaim"] == {"claimName": "llm-checkpoints"}
    assert metrics_ports(objs) == {"stage config": 9600, "service": (9600, 9600), "container": 9600}
    assert pod["spec"]["serviceAccountName"] == "llm-worker"
    # Flags as well, and empty values mean "none", as the chart passes them.
    flags = run_cli(
        "render",
        job,
        "--default-pvc",
        "other",
        "--driver-metrics-port",
        "9700",
        LLMTRAIN_WORKER_SERVICE_ACCOUNT="",
        LLMTRAIN_DEFAULT_PVC="x",
    )
    assert flags.returncode == 0, flags.stderr
    objs = list(yaml.safe_load_all(flags.stdout))
    assert storage(objs[2])[0]["persistentVolumeClaim"] == {"claimName": "other"}
    assert metrics_ports(objs)["container"] == 9700
    assert objs[2]["spec"]["serviceAccountName"] == "default"
    bad = run_cli("render", job, LLMTRAIN_METRICS_PORT="80")
    assert bad.returncode != 0 and "1024" in bad.stderr  # the range is checked
    none = run_cli("render", job, LLMTRAIN_DEFAULT_PVC="")  # nowhere to keep the model
    assert none.returncode == 1 and "spec.storage: no storage that outlives" in none.stderr


def tmp_job(root: Path) -> str:
    path = root / ".build" / "render-defaults.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(DOC))
    return str(path)


# ---- a refused pod -----------------------------------------------------------------------


# The whole path (refusal, condition, one Event, cleared once the account exists) runs on
# the real apiserver: tests/cluster/operator_tests/test_operator_failures.py.


def test_a_missing_account_message_says_where_to_create_it() -> None:
    refused = [
        'pods "chat-sft-a1-0" is forbidden: error looking up service account '
        'ml/llm-worker: serviceaccount "llm-worker" not found'
    ] * 2
    msg = reconcile.refusal_message(make(), "sft", 1, refused, SET)
    assert msg.startswith('stage sft attempt 1: pods "chat-sft-a1-0" is forbidden')
    assert "(and 1 more)" in msg and "create it in namespace 'ml'" in msg
    other = reconcile.refusal_message(make(), "sft", 1, ["quota exceeded"], SET)
    assert other == "stage sft attempt 1: quota exceeded"


@pytest.mark.parametrize(
    ("status", "reported"), [(403, True), (422, True), (429, False), (500, False)]
)
def test_only_refusals_for_good_are_reported(status: int, reported: bool) -> None:
    e = ApiException(status=status, reason="X", body=json.dumps({"message": "no"}))
    assert reconcile._refusal(e) == ("no" if reported else "")
    assert reconcile._refusal(ApiException(status=403, reason="Forbidden")) == "403 Forbidden"


def test_a_terminating_namespace_is_not_a_refusal() -> None:
    body = {
        "message": "unable to create new content in namespace x because it is being terminated",
        "details": {"causes": [{"reason": "NamespaceTerminating"}]},
    }
    assert kube.namespace_terminating(ApiException(status=403, reason="Forbidden")) is False
    e = ApiException(status=403, reason="Forbidden")
    e.body = json.dumps(body)
    assert kube.namespace_terminating(e) is True
