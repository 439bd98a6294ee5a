"""Pure builders: one stage attempt of an LLMTrainingJob as Kubernetes manifests.

    defaults = JobDefaults(image="ghcr.io/llmtrain/trainer:0.1.0", pvc="llm-checkpoints")
    objs = build_stage_objects(job, "sft", attempt=1, defaults=defaults)
    # [ConfigMap, Service, Pod rank 0 (Ray head + driver), Pod rank 1, ...]

No I/O and no kopf: the same functions feed the operator and `llmtrain render`, and the
golden files in tests/golden/. Names are deterministic (`{job}-{stage}-a{attempt}-{rank}`),
so creating an object twice is a harmless 409.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from llmtrain.operator import api
from llmtrain.trainer.config import StageConfig, resolve_stages

Manifest = dict[str, Any]

# CONVENTIONS §4: the labels the outside world sees.
LABEL_JOB = "llmtrain.io/job"
LABEL_STAGE = "llmtrain.io/stage"
LABEL_ATTEMPT = "llmtrain.io/attempt"
LABEL_RANK = "llmtrain.io/rank"
LABEL_ROLE = "llmtrain.io/role"
APP_LABELS = {
    "app.kubernetes.io/name": "llmtrain",
    "app.kubernetes.io/component": "trainer",
    "app.kubernetes.io/managed-by": "llmtrain-operator",
}

CONTAINER = "trainer"
CONFIG_DIR = "/etc/llmtrain"
CONFIG_KEY = "stage.json"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
RAY_GCS_PORT = 6379
# Time the trainer gets after SIGTERM (suspend, teardown) to write a checkpoint.
TERMINATION_GRACE_SECONDS = 120
# The trainer image does not need to run as root; restricted PSS wants a non-zero uid.
RUN_AS_USER = 1000
DEFAULT_TRAINER_IMAGE = "ghcr.io/llmtrain/trainer:0.1.0"
DEFAULT_METRICS_PORT = 9400


@dataclass(frozen=True)
class JobDefaults:
    """What the operator fills in where a job leaves it unset: the `llmtrain operator`
    options, which the Helm chart sets from `jobDefaults` and `serviceAccount.worker`."""

    image: str = DEFAULT_TRAINER_IMAGE
    # Claim for jobs whose storage names neither a pvc nor an object store; None: emptyDir.
    pvc: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    # Worker pods' serviceAccountName; None: the namespace's `default`.
    service_account: str | None = None


_DNS_LABEL_MAX = 63


def _bounded(name: str) -> str:
    """`name` if it is a valid DNS label length, else a prefix plus a stable hash."""
    if len(name) <= _DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _DNS_LABEL_MAX - 9].rstrip('-')}-{digest}"


def attempt_name(job: str, stage: str, attempt: int) -> str:
    """Name of an attempt's ConfigMap and headless Service: `{job}-{stage}-a{attempt}`.

    Services need an RFC 1035 label (starts with a letter, at most 63 characters), so a
    job name starting with a digit gets an `x` prefix and long names are hashed.
    """
    base = f"{job}-{stage}-a{attempt}"
    return _bounded(base if base[0].isalpha() else f"x{base}")


def pod_name(job: str, stage: str, attempt: int, rank: int) -> str:
    """`{job}-{stage}-a{attempt}-{rank}`; also the pod's hostname, so at most 63 characters."""
    return _bounded(f"{job}-{stage}-a{attempt}-{rank}")


def head_address(job: str, stage: str, attempt: int, namespace: str) -> str:
    """Ray GCS address of an attempt: the head pod's DNS name under the headless Service."""
    svc = attempt_name(job, stage, attempt)
    return f"{pod_name(job, stage, attempt, 0)}.{svc}.{namespace}.svc:{RAY_GCS_PORT}"


def namespace_of(job: api.LLMTrainingJob) -> str:
    return job.metadata.namespace or "default"


def labels(job: str, stage: str, attempt: int) -> dict[str, str]:
    """Labels shared by every object of an attempt; the Service selects pods by these."""
    return {
        **APP_LABELS,
        "app.kubernetes.io/instance": job,
        LABEL_JOB: job,
        LABEL_STAGE: stage,
        LABEL_ATTEMPT: str(attempt),
    }


def owner_reference(job: api.LLMTrainingJob) -> dict[str, Any]:
    """Children are garbage-collected with their job."""
    extra = job.metadata.model_extra or {}
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job.metadata.name,
        "uid": extra.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: api.LLMTrainingJob, name: str, lbls: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace_of(job), "labels": lbls}
    if (job.metadata.model_extra or {}).get("uid"):  # absent when rendering a local file
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


def stage_index(job: api.LLMTrainingJob, stage: str) -> int:
    for i, st in enumerate(job.spec.stages):
        if st.name == stage:
            return i
    raise KeyError(f"job {job.metadata.name!r} has no stage {stage!r}")


def metrics_port(job: api.LLMTrainingJob, defaults: JobDefaults) -> int:
    """The driver's /metrics port: the job's own, else the operator's default."""
    return job.spec.monitoring.metrics_port or defaults.metrics_port


def storage_claim(job: api.LLMTrainingJob, defaults: JobDefaults) -> api.PVCStorage | None:
    """The claim mounted at storage.mountPath: the job's own, else the default claim,
    unless the job uploads to an object store."""
    storage = job.spec.storage
    if storage.pvc is not None or storage.object_store is not None or not defaults.pvc:
        return storage.pvc
    return api.PVCStorage(claim_name=defaults.pvc)


def world_size(job: api.LLMTrainingJob) -> int:
    """Ray Train workers: one per GPU, or one per pod on CPU-only pods."""
    r = job.spec.resources
    return r.workers * max(r.gpus_per_worker, 1)


def stage_configs(
    job: api.LLMTrainingJob, defaults: JobDefaults = JobDefaults()
) -> list[StageConfig]:
    """Every stage resolved, with the same model hand-off rules as the local runner."""
    spec = job.spec
    return resolve_stages(
        job=job.metadata.name,
        namespace=namespace_of(job),
        model=spec.model,
        stages=spec.stages,
        storage_root=spec.storage.mount_path,
        workers=world_size(job),
        distributed=spec.distributed,
        checkpointing=spec.checkpointing,
        metrics_port=metrics_port(job, defaults),
    )


def stage_config(
    job: api.LLMTrainingJob, stage: str, defaults: JobDefaults = JobDefaults()
) -> StageConfig:
    return stage_configs(job, defaults)[stage_index(job, stage)]


def stage_output(job: api.LLMTrainingJob, stage: str) -> str:
    """Where a finished stage's model lives, as recorded in status.stages[].output."""
    out = f"{stage_config(job, stage).output_dir}/final"
    store = job.spec.storage.object_store
    if store is not None:
        # The trainer uploads the stage directory under the bucket with the same layout.
        prefix = job.spec.storage.mount_path.rstrip("/")
        return store.uri.rstrip("/") + out[len(prefix) :]
    return out


def build_config_map(
    job: api.LLMTrainingJob, stage: str, attempt: int, defaults: JobDefaults = JobDefaults()
) -> Manifest:
    """The stage config file (docs/contracts.md §1), mounted at /etc/llmtrain/stage.json."""
    cfg = stage_config(job, stage, defaults)
    name = attempt_name(job.metadata.name, stage, attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, name, labels(job.metadata.name, stage, attempt)),
        "data": {CONFIG_KEY: cfg.model_dump_json(by_alias=True, indent=2) + "\n"},
    }


def build_service(
    job: api.LLMTrainingJob, stage: str, attempt: int, defaults: JobDefaults = JobDefaults()
) -> Manifest:
    """Headless Service: gives the head pod a DNS name (`{pod}.{svc}`) for the Ray address."""
    lbls = labels(job.metadata.name, stage, attempt)
    selector = {k: lbls[k] for k in (LABEL_JOB, LABEL_STAGE, LABEL_ATTEMPT)}
    port = metrics_port(job, defaults)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, attempt_name(job.metadata.name, stage, attempt), lbls),
        "spec": {
            "clusterIP": "None",
            # Workers must resolve the head before any readiness is reported.
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [
                {"name": "ray-gcs", "port": RAY_GCS_PORT, "targetPort": RAY_GCS_PORT},
                {"name": "metrics", "port": port, "targetPort": port},
            ],
        },
    }


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _env(job: api.LLMTrainingJob, stage: str, attempt: int, rank: int) -> list[dict[str, Any]]:
    spec = job.spec
    ns = namespace_of(job)
    env: list[dict[str, Any]] = [
        {"name": "LLMTRAIN_JOB", "value": job.metadata.name},
        {"name": "LLMTRAIN_NAMESPACE", "value": ns},
        {"name": "LLMTRAIN_STAGE", "value": stage},
        {"name": "LLMTRAIN_ATTEMPT", "value": str(attempt)},
        {"name": "LLMTRAIN_RANK", "value": str(rank)},
        {"name": "LLMTRAIN_WORLD_SIZE", "value": str(spec.resources.workers)},
        {"name": "LLMTRAIN_STORAGE", "value": spec.storage.mount_path},
        {"name": "RAY_ADDRESS", "value": head_address(job.metadata.name, stage, attempt, ns)},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if spec.model.hub_token is not None:
        env.append(_secret_env("HF_TOKEN", spec.model.hub_token))
    store = spec.storage.object_store
    if store is not None:
        env.append({"name": "LLMTRAIN_OBJECT_STORE_URI", "value": store.uri})
        if store.endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": store.endpoint})
        if store.access_key_id is not None:
            env.append(_secret_env("AWS_ACCESS_KEY_ID", store.access_key_id))
        if store.secret_access_key is not None:
            env.append(_secret_env("AWS_SECRET_ACCESS_KEY", store.secret_access_key))
    for var in spec.resources.env:
        if var.secret_key_ref is not None:
            env.append(_secret_env(var.name, var.secret_key_ref))
        else:
            env.append({"name": var.name, "value": var.value or ""})
    return env


def _command(job: api.LLMTrainingJob, rank: int) -> list[str]:
    gpus = job.spec.resources.gpus_per_worker
    if rank == 0:
        # RAY_ADDRESS names this very head; `ray start --head` must not try to join it.
        script = (
            f"env -u RAY_ADDRESS ray start --head --port={RAY_GCS_PORT} --node-ip-address=$POD_IP"
            f" --num-gpus={gpus} --dashboard-host=0.0.0.0 --disable-usage-stats"
            f" && exec llmtrain worker --stage-config {CONFIG_FILE}"
        )
    else:
        # Wait for the head's GCS instead of failing (exit 1 would count as permanent).
        script = (
            "until ray health-check --address=$RAY_ADDRESS >/dev/null 2>&1; do sleep 2; done"
            f" && exec ray start --address=$RAY_ADDRESS --node-ip-address=$POD_IP"
            f" --num-gpus={gpus} --block"
        )
    return ["/bin/sh", "-c", script]


def _volumes(
    job: api.LLMTrainingJob, stage: str, attempt: int, pvc: api.PVCStorage | None
) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = []
    if pvc is not None:
        vols.append({"name": "storage", "persistentVolumeClaim": {"claimName": pvc.claim_name}})
    else:
        # Object store (or nothing): a scratch directory; the trainer uploads what it keeps.
        vols.append({"name": "storage", "emptyDir": {}})
    vols.append(
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": job.spec.resources.shm_size}}
    )
    cm = attempt_name(job.metadata.name, stage, attempt)
    vols.append({"name": "config", "configMap": {"name": cm}})
    return vols


def _mounts(job: api.LLMTrainingJob, pvc: api.PVCStorage | None) -> list[dict[str, Any]]:
    mount: dict[str, Any] = {"name": "storage", "mountPath": job.spec.storage.mount_path}
    if pvc is not None and pvc.sub_path:
        mount["subPath"] = pvc.sub_path
    return [
        mount,
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]


def _resources(job: api.LLMTrainingJob) -> dict[str, Any]:
    r = job.spec.resources
    amounts: dict[str, Any] = {"cpu": str(r.cpu), "memory": str(r.memory)}
    if r.gpus_per_worker > 0:
        amounts["nvidia.com/gpu"] = str(r.gpus_per_worker)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _ports(rank: int, metrics: int) -> list[dict[str, Any]]:
    if rank != 0:
        return []
    return [
        {"name": "ray-gcs", "containerPort": RAY_GCS_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": metrics, "protocol": "TCP"},
    ]


def build_worker_pod(
    job: api.LLMTrainingJob,
    stage: str,
    attempt: int,
    rank: int,
    defaults: JobDefaults = JobDefaults(),
) -> Manifest:
    """One pod of the gang. Rank 0 is the Ray head and runs the driver; the rest join it."""
    spec = job.spec
    r = spec.resources
    name = pod_name(job.metadata.name, stage, attempt, rank)
    ours = {
        **labels(job.metadata.name, stage, attempt),
        LABEL_RANK: str(rank),
        LABEL_ROLE: "head" if rank == 0 else "worker",
    }
    pvc = storage_claim(job, defaults)
    meta = _metadata(job, name, {**r.labels, **ours})
    if r.annotations:
        meta["annotations"] = dict(r.annotations)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": r.image or defaults.image,
        "command": _command(job, rank),
        "env": _env(job, stage, attempt, rank),
        "resources": _resources(job),
        "volumeMounts": _mounts(job, pvc),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if r.image_pull_policy:
        container["imagePullPolicy"] = r.image_pull_policy
    ports = _ports(rank, metrics_port(job, defaults))
    if ports:
        container["ports"] = ports
    pod_spec: dict[str, Any] = {
        # Gang semantics: the operator, not the kubelet, decides about restarts.
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": attempt_name(job.metadata.name, stage, attempt),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": _volumes(job, stage, attempt, pvc),
    }
    if defaults.service_account:
        pod_spec["serviceAccountName"] = defaults.service_account
    if r.node_selector:
        pod_spec["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in r.tolerations
        ]
    if r.affinity:
        pod_spec["affinity"] = copy.deepcopy(r.affinity)
    if r.priority_class_name:
        pod_spec["priorityClassName"] = r.priority_class_name
    if r.scheduler_name:
        pod_spec["schedulerName"] = r.scheduler_name
    pod: Manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
    if r.pod_template:
        pod = deep_merge(pod, r.pod_template)
        # The override may add labels, never rewrite the ones the operator tracks pods by.
        pod["metadata"].update(name=name, namespace=namespace_of(job))
        pod["metadata"]["labels"] = {**(pod["metadata"].get("labels") or {}), **ours}
        pod["metadata"].pop("ownerReferences", None)
        pod["metadata"].update({k: v for k, v in meta.items() if k == "ownerReferences"})
    return pod


def build_stage_objects(
    job: api.LLMTrainingJob, stage: str, attempt: int, defaults: JobDefaults = JobDefaults()
) -> list[Manifest]:
    """Everything one attempt needs, in creation order: ConfigMap, Service, pods by rank."""
    return [
        build_config_map(job, stage, attempt, defaults),
        build_service(job, stage, attempt, defaults),
        *(
            build_worker_pod(job, stage, attempt, rank, defaults)
            for rank in range(job.spec.resources.workers)
        ),
    ]


def deep_merge(base: Any, override: Any) -> Any:
    """Strategic-merge-ish: maps merge recursively, `null` deletes a key, lists of named
    objects (containers, env, volumes, volumeMounts, ports) merge by `name`, other lists
    are replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list) and _named(base) and _named(override):
        merged = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged)}
        for item in override:
            if item["name"] in index:
                merged[index[item["name"]]] = deep_merge(merged[index[item["name"]]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(override)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # the stage config reads as JSON, not escapes
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: list[Manifest]) -> str:
    """Multi-document YAML, keys in builder order, multi-line strings as blocks."""
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False)
