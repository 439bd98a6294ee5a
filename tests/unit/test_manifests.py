"""The pure builders, field by field, plus golden YAML for whole stage attempts.

UPDATE_GOLDEN=1 pytest tests/unit/test_manifests.py     # rewrite tests/golden/*.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtrain.operator import api, layout, manifests
from llmtrain.trainer.contract import StageConfig

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
UID = "0b6c1f6e-6d7a-4f43-9a53-1c7a8e9d2f10"
IMAGE = "registry.example/llmtrain/trainer:test"
DEFAULTS = layout.JobDefaults(image=IMAGE)

BASE: dict[str, Any] = {
    "apiVersion": "llmtrain.io/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {"name": "chat", "namespace": "ml", "uid": UID},
    "spec": {
        "model": {"source": "org/base", "hubToken": {"name": "hf", "key": "token"}},
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset": {"source": "/storage/d.jsonl", "format": "prompt-completion"},
            },
            {
                "name": "dpo",
                "type": "dpo",
                "dataset": {"source": "/storage/p.jsonl", "format": "preference"},
            },
        ],
        "resources": {
            "workers": 3,
            "gpusPerWorker": 4,
            "cpu": "16",
            "memory": "128Gi",
            "shmSize": "32Gi",
        },
        "storage": {"pvc": {"claimName": "ckpt", "subPath": "runs"}, "mountPath": "/storage"},
        "monitoring": {"metricsPort": 9500},
    },
}


def make(**spec: Any) -> api.LLMTrainingJob:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(copy.deepcopy(spec))
    return api.parse_job(doc)


def env(pod: dict[str, Any]) -> dict[str, Any]:
    items = pod["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in items}


# ---- names and labels --------------------------------------------------------------------


def test_names_are_deterministic_and_include_the_attempt() -> None:
    job = make()
    objs = manifests.build_stage_objects(job, "sft", 2, DEFAULTS)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "chat-sft-a2"),
        ("Service", "chat-sft-a2"),
        ("Pod", "chat-sft-a2-0"),
        ("Pod", "chat-sft-a2-1"),
        ("Pod", "chat-sft-a2-2"),
    ]
    assert objs == manifests.build_stage_objects(job, "sft", 2, DEFAULTS)


def test_long_names_stay_dns_labels() -> None:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = "j" * 40
    doc["spec"]["stages"][0]["name"] = "9" + "s" * 39
    job = api.parse_job(doc)
    pod = manifests.build_worker_pod(job, "9" + "s" * 39, 12, 2)
    svc = manifests.build_service(job, "9" + "s" * 39, 12)
    for name in (pod["metadata"]["name"], pod["spec"]["hostname"], svc["metadata"]["name"]):
        assert len(name) <= 63 and name[-1].isalnum()
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    assert layout.pod_name("1abc", "s", 1, 0) == "1abc-s-a1-0"
    assert layout.attempt_name("1abc", "s", 1) == "x1abc-s-a1"  # Services start with a letter


def test_labels_owner_and_roles() -> None:
    job = make(
        resources={
            **BASE["spec"]["resources"],
            "labels": {"kueue.x-k8s.io/queue-name": "gpu"},
            "annotations": {"team": "nlp"},
        }
    )
    head, worker = (manifests.build_worker_pod(job, "sft", 1, r) for r in (0, 1))
    assert head["metadata"]["labels"] == {
        "kueue.x-k8s.io/queue-name": "gpu",
        "app.kubernetes.io/name": "llmtrain",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "llmtrain-operator",
        "app.kubernetes.io/instance": "chat",
        "llmtrain.io/job": "chat",
        "llmtrain.io/stage": "sft",
        "llmtrain.io/attempt": "1",
        "llmtrain.io/rank": "0",
        "llmtrain.io/role": "head",
    }
    assert worker["metadata"]["labels"]["llmtrain.io/role"] == "worker"
    assert head["metadata"]["annotations"] == {"team": "nlp"}
    assert head["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "llmtrain.io/v1alpha1",
            "kind": "LLMTrainingJob",
            "name": "chat",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_without_a_uid_there_is_no_owner_reference() -> None:
    doc = copy.deepcopy(BASE)
    del doc["metadata"]["uid"]
    objs = manifests.build_stage_objects(api.parse_job(doc), "sft", 1)
    assert all("ownerReferences" not in o["metadata"] for o in objs)


# ---- config map and service ----------------------------------------------------------------


def test_config_map_holds_the_resolved_stage_config() -> None:
    job = make()
    first = StageConfig.model_validate_json(
        manifests.build_config_map(job, "sft", 1)["data"]["stage.json"]
    )
    second = StageConfig.model_validate_json(
        manifests.build_config_map(job, "dpo", 3)["data"]["stage.json"]
    )
    assert first.output_dir == "/storage/chat/sft"
    assert first.input_model == "org/base"
    assert second.input_model == "/storage/chat/sft/final"  # the previous stage's output
    assert first.workers == 12  # 3 pods x 4 GPUs
    assert first.metrics_port == 9500
    assert (first.job, first.namespace, first.stage.name) == ("chat", "ml", "sft")


def test_cpu_only_pods_count_one_ray_worker_each() -> None:
    job = make(resources={"workers": 2, "gpusPerWorker": 0})
    cfg = json.loads(manifests.build_config_map(job, "sft", 1)["data"]["stage.json"])
    assert cfg["workers"] == 2
    limits = manifests.build_worker_pod(job, "sft", 1, 0)["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in limits["limits"] and "nvidia.com/gpu" not in limits["requests"]


def test_headless_service_selects_the_attempt() -> None:
    svc = manifests.build_service(make(), "sft", 2)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {
        "llmtrain.io/job": "chat",
        "llmtrain.io/stage": "sft",
        "llmtrain.io/attempt": "2",
    }
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "ray-gcs": 6379,
        "metrics": 9500,
    }


# ---- pods --------------------------------------------------------------------------------


def test_rank_zero_is_head_and_driver_others_join() -> None:
    job = make()
    head, worker = (manifests.build_worker_pod(job, "sft", 1, r, DEFAULTS) for r in (0, 1))
    head_cmd = head["spec"]["containers"][0]["command"][-1]
    worker_cmd = worker["spec"]["containers"][0]["command"][-1]
    assert "ray start --head --port=6379" in head_cmd
    assert "llmtrain worker --stage-config /etc/llmtrain/stage.json" in head_cmd
    assert "ray start --address=$RAY_ADDRESS" in worker_cmd and "--block" in worker_cmd
    assert "llmtrain worker" not in worker_cmd
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports == {"ray-gcs": 6379, "metrics": 9500}
    assert "ports" not in worker["spec"]["containers"][0]
    assert env(worker)["RAY_ADDRESS"] == "chat-sft-a1-0.chat-sft-a1.ml.svc:6379"
    assert head["spec"]["hostname"] == "chat-sft-a1-0"
    assert head["spec"]["subdomain"] == "chat-sft-a1"
    assert head["spec"]["restartPolicy"] == "Never"


def test_environment_follows_the_contract() -> None:
    """Only what the trainer reads (docs/contracts.md §2): the Ray head, the pod's own IP for
    Ray, and the hub token by reference; the stage's identity is in its config file."""
    e = env(manifests.build_worker_pod(make(), "dpo", 3, 2, DEFAULTS))
    assert e == {
        "RAY_ADDRESS": "chat-dpo-a3-0.chat-dpo-a3.ml.svc:6379",
        "POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
        "HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }


def test_resources_volumes_and_mounts() -> None:
    pod = manifests.build_worker_pod(make(), "sft", 1, 1, DEFAULTS)
    c = pod["spec"]["containers"][0]
    assert c["image"] == IMAGE
    assert c["resources"] == {
        "requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"},
        "limits": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"},
    }
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["storage"] == {"name": "storage", "persistentVolumeClaim": {"claimName": "ckpt"}}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert vols["config"]["configMap"] == {"name": "chat-sft-a1"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["storage"] == {"name": "storage", "mountPath": "/storage", "subPath": "runs"}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/llmtrain", "readOnly": True}


def test_object_store_uses_scratch_and_secret_credentials() -> None:
    job = make(
        resources={**BASE["spec"]["resources"], "workers": 1},  # a bucket serves one-pod gangs
        storage={
            "objectStore": {
                "uri": "s3://bucket/llm",
                "endpoint": "http://minio:9000",
                "accessKeyId": {"name": "s3", "key": "id"},
                "secretAccessKey": {"name": "s3", "key": "secret"},
            }
        },
    )
    pod = manifests.build_worker_pod(job, "sft", 1, 0)
    e = env(pod)
    # Credentials in the variables the trainer reads (contract.ENV_AWS_*), nothing else: the
    # bucket settings travel in the stage config (tests/trainer/test_objectstore.py runs both
    # against a real S3 server).
    assert e["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "id"}}
    assert e["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secret"}}
    assert not {k for k in e if "OBJECT_STORE" in k or k == "AWS_ENDPOINT_URL"}
    cm = manifests.build_config_map(job, "dpo", 1)
    cfg = StageConfig.model_validate_json(next(iter(cm["data"].values())))
    assert cfg.object_store is not None
    assert cfg.object_store.model_dump() == {
        "uri": "s3://bucket/llm",
        "endpoint": "http://minio:9000",
        "region": None,
        "path_style": True,
    }
    assert cfg.input_model == "s3://bucket/llm/chat/sft/final"  # the hand-off, via the bucket
    storage = next(v for v in pod["spec"]["volumes"] if v["name"] == "storage")
    assert storage == {"name": "storage", "emptyDir": {}}
    assert layout.stage_output(job, "sft") == "s3://bucket/llm/chat/sft/final"
    assert layout.stage_output(make(), "sft") == "/storage/chat/sft/final"


def test_restricted_pod_security() -> None:
    pod = manifests.build_worker_pod(make(), "sft", 1, 0)
    psc = pod["spec"]["securityContext"]
    csc = pod["spec"]["containers"][0]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == "default"


def test_scheduling_fields_pass_through() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
    }
    job = make(
        resources={
            **BASE["spec"]["resources"],
            "image": "own/image:1",
            "imagePullPolicy": "Always",
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "affinity": affinity,
            "priorityClassName": "high",
            "schedulerName": "volcano",
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "secretKeyRef": {"name": "s", "key": "k"}},
            ],
        }
    )
    pod = manifests.build_worker_pod(job, "sft", 1, 1, DEFAULTS)
    spec = pod["spec"]
    assert spec["containers"][0]["image"] == "own/image:1"  # the job's image wins
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["affinity"] == affinity
    assert spec["priorityClassName"] == "high"
    assert spec["schedulerName"] == "volcano"
    assert env(pod)["A"] == "1" and env(pod)["B"] == {"secretKeyRef": {"name": "s", "key": "k"}}


TEMPLATE = {
    "metadata": {
        "labels": {"extra": "yes", "llmtrain.io/rank": "7"},
        "annotations": {"sidecar.istio.io/inject": "false"},
    },
    "spec": {
        "terminationGracePeriodSeconds": 600,
        "containers": [
            {
                "name": "trainer",
                "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                "envFrom": [{"configMapRef": {"name": "nccl"}}],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            },
            {
                "name": "shipper",
                "image": "fluent/fluent-bit:3",
                "env": [{"name": "TOKEN", "secretKeyRef": {"name": "s", "key": "k"}}],
                "volumeMounts": [{"name": "storage", "mountPath": "/logs", "readOnly": True}],
            },
        ],
        "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "certs", "secret": {"secretName": "ca"}},
        ],
        "imagePullSecrets": [{"name": "regcred"}],
        "runtimeClassName": "nvidia",
    },
}


def test_pod_template_adds_to_the_pod_and_keeps_our_identity() -> None:
    job = make(resources={**BASE["spec"]["resources"], "podTemplate": TEMPLATE})
    pod = manifests.build_worker_pod(job, "sft", 1, 0, DEFAULTS)
    spec = pod["spec"]
    assert pod["metadata"]["labels"]["extra"] == "yes"
    assert pod["metadata"]["labels"]["llmtrain.io/rank"] == "0"
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert pod["metadata"]["ownerReferences"][0]["uid"] == UID
    assert spec["terminationGracePeriodSeconds"] == 600
    assert [c["name"] for c in spec["containers"]] == ["trainer", "shipper"]
    trainer, shipper = spec["containers"]
    assert trainer["image"] == IMAGE and trainer["command"][0] == "/bin/sh"
    assert env(pod)["NCCL_DEBUG"] == "INFO" and env(pod)["RAY_ADDRESS"].startswith("chat-sft-a1-0")
    assert trainer["envFrom"] == [{"configMapRef": {"name": "nccl"}}]
    assert [m["name"] for m in trainer["volumeMounts"]] == ["storage", "dshm", "config", "cache"]
    assert shipper["env"] == [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    ]
    assert [v["name"] for v in spec["volumes"]] == ["storage", "dshm", "config", "cache", "certs"]
    assert spec["volumes"][4] == {"name": "certs", "secret": {"secretName": "ca"}}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["runtimeClassName"] == "nvidia"
    for c in [*spec["containers"], *spec["initContainers"]]:  # sidecars too: restricted
        assert c["securityContext"] == manifests.CONTAINER_SECURITY, c["name"]
    assert spec["serviceAccountName"] == "default" and spec["automountServiceAccountToken"] is False


def test_a_pod_template_without_metadata_keeps_the_owner_reference() -> None:
    """The old merge shared the metadata dict, so popping ownerReferences emptied it and
    the job's pods outlived the job."""
    job = make(
        resources={
            **BASE["spec"]["resources"],
            "podTemplate": {"spec": {"runtimeClassName": "nvidia"}},
        }
    )
    pod = manifests.build_worker_pod(job, "sft", 1, 1, DEFAULTS)
    assert pod["metadata"]["ownerReferences"] == [layout.owner_reference(job)]


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"hostPID": True}, "spec.hostPID"),
        ({"hostNetwork": True}, "spec.hostNetwork"),
        ({"serviceAccountName": "admin"}, "spec.serviceAccountName"),
        ({"automountServiceAccountToken": True}, "spec.automountServiceAccountToken"),
        ({"securityContext": {"runAsUser": 0}}, "spec.securityContext"),
        ({"nodeName": "gpu-1"}, "spec.nodeName"),
        ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath"),
        (
            {"containers": [{"name": "x", "image": "i", "securityContext": {"privileged": True}}]},
            "spec.containers[0].securityContext",
        ),
        (
            {
                "containers": [
                    {"name": "x", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}]}
                ]
            },
            "spec.containers[0].ports[0].hostPort",
        ),
        (
            {
                "volumes": [
                    {
                        "name": "t",
                        "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]},
                    }
                ]
            },
            "spec.volumes[0].projected.sources[0].serviceAccountToken",
        ),
        ({"containers": [{"name": "trainer", "image": "evil"}]}, "spec.containers[0]"),
        ({"containers": [{"name": "x"}]}, "spec.containers[0].image"),
        ({"volumes": [{"name": "storage", "emptyDir": {}}]}, "spec.volumes[0].name"),
        ({"volumes": [{"name": "v", "emptyDir": {}, "secret": {}}]}, "spec.volumes[0]"),
        (
            {
                "containers": [
                    {"name": "trainer", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}
                ]
            },
            "spec.containers[0].volumeMounts[0].name",
        ),
        ({"initContainers": [{"name": "trainer"}]}, "spec.initContainers[0].name"),
    ],
)
def test_pod_template_refuses_what_a_job_must_not_set(spec: dict[str, Any], path: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["resources"]["podTemplate"] = {"spec": spec}
    problems = [p.path for p in api.validate_job(doc)]
    assert f"spec.resources.podTemplate.{path}" in problems, problems


# ---- golden files ------------------------------------------------------------------------


def _example(name: str) -> api.LLMTrainingJob:
    doc = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    doc["metadata"].setdefault("namespace", "default")
    doc["metadata"]["uid"] = UID
    return api.parse_job(doc)


GOLDEN_CASES = {
    "quickstart-pretrain-a1": lambda: (_example("quickstart"), "pretrain", 1),
    "qlora-sft-8b-sft-a1": lambda: (_example("qlora-sft-8b"), "sft", 1),
    "pipeline-dpo-a2": lambda: (_example("pipeline-pretrain-sft-dpo"), "dpo", 2),
    "chat-sft-a1": lambda: (make(), "sft", 1),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden(case: str) -> None:
    job, stage, attempt = GOLDEN_CASES[case]()
    text = manifests.to_yaml(manifests.build_stage_objects(job, stage, attempt, DEFAULTS))
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} is stale; review, then rerun with UPDATE_GOLDEN=1"
    assert list(yaml.safe_load_all(text))  # and it parses back


def test_render_prints_the_first_stage(root: Path) -> None:
    from tests.conftest import run_cli

    example = str(root / "examples" / "pipeline-pretrain-sft-dpo.yaml")
    r = run_cli(
        "render",
        example,
        "--network-policy",
        LLMTRAIN_TRAINER_IMAGE=IMAGE,
        LLMTRAIN_METRICS_FROM='[{"podSelector": {"matchLabels": {"app": "prom"}}}]',
    )
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "NetworkPolicy", *["Pod"] * 4]
    assert docs[3]["metadata"]["name"] == "domain-assistant-pretrain-a1-0"
    assert docs[3]["spec"]["containers"][0]["image"] == IMAGE
    bad = run_cli("render", example, "--stage", "nope")
    assert bad.returncode == 1 and "no stage 'nope'" in bad.stderr


def test_render_refuses_what_the_operator_would_refuse(root: Path) -> None:
    """The quickstart is a local job: relative paths, no shared storage."""
    from tests.conftest import run_cli

    r = run_cli("render", str(root / "examples" / "quickstart.yaml"))
    assert r.returncode == 1
    assert "spec.storage: no storage that outlives the pods" in r.stderr
    assert "spec.stages[0].dataset.source: relative path 'quickstart/corpus.txt'" in r.stderr


def test_network_policy_admits_only_the_job_and_the_metrics_readers() -> None:
    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    defaults = dataclasses.replace(DEFAULTS, network_policy=True, metrics_from=(prom,))
    objs = manifests.build_stage_objects(make(), "sft", 2, defaults)
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy")
    assert policy["metadata"]["name"] == "chat-sft-a2"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {
            "llmtrain.io/job": "chat",
            "llmtrain.io/stage": "sft",
            "llmtrain.io/attempt": "2",
        }
    }
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"llmtrain.io/job": "chat"}}}]},
        {"from": [prom], "ports": [{"port": 9500, "protocol": "TCP"}]},  # the job's own port
    ]
    assert not any(
        o["kind"] == "NetworkPolicy"
        for o in manifests.build_stage_objects(make(), "sft", 2, DEFAULTS)
    )


@pytest.mark.parametrize(("cpu", "ray"), [("900m", 1), ("16", 16), (8, 8), ("7.5", 7)])
def test_ray_is_told_its_cpus(cpu: Any, ray: int) -> None:
    """Ray truncates a fractional CPU limit to 0 and then runs no Ray Train worker there."""
    job = make(resources={**BASE["spec"]["resources"], "cpu": cpu})
    for rank in (0, 1):
        script = manifests.build_worker_pod(job, "sft", 1, rank)["spec"]["containers"][0]
        assert f"--num-cpus={ray} " in script["command"][2]
