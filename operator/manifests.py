"""Pure builders: one stage attempt of an LLMTrainingJob as Kubernetes manifests.

    defaults = JobDefaults(image="registry.example/llmtrain/trainer:0.1.0", pvc="llm-storage")
    objs = build_stage_objects(job, "sft", attempt=1, defaults=defaults)
    # [ConfigMap, Service, (NetworkPolicy), Pod rank 0 (Ray head + driver), Pod rank 1, ...]

No I/O and no kopf: the same functions feed the operator and `llmtrain render`, and the
golden files in tests/golden/. Names and labels come from layout.py.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from llmtrain.operator import api, gang
from llmtrain.operator.layout import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_KEY,
    CONTAINER,
    INIT_CONFIG_FILE,
    INIT_STAGE,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RANK,
    LABEL_ROLE,
    LABEL_STAGE,
    RAY_GCS_PORT,
    RUN_AS_USER,
    JobDefaults,
    attempt_name,
    head_address,
    init_config,
    init_name,
    labels,
    metrics_port,
    namespace_of,
    owner_reference,
    pod_name,
    stage_config,
    storage_claim,
)
from llmtrain.operator.podtemplate import PodTemplate
from llmtrain.trainer.contract import (
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    ENV_HF_TOKEN,
    ENV_RAY_ADDRESS,
    ExitCode,
)
from llmtrain.trainer.inputs import JOB_CONFIG, TERMINATION_LOG

Manifest = dict[str, Any]
# Time the trainer gets after SIGTERM (suspend, teardown) to write a checkpoint.
TERMINATION_GRACE_SECONDS = 120


def _metadata(job: api.LLMTrainingJob, name: str, lbls: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace_of(job), "labels": lbls}
    if (job.metadata.model_extra or {}).get("uid"):  # absent when rendering a local file
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


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


def _env(job: api.LLMTrainingJob, stage: str, attempt: int) -> list[dict[str, Any]]:
    spec = job.spec
    ns = namespace_of(job)
    # What the trainer reads (docs/contracts.md §2); everything else is in the stage config.
    env: list[dict[str, Any]] = [
        {"name": ENV_RAY_ADDRESS, "value": head_address(job.metadata.name, stage, attempt, ns)},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if spec.model.hub_token is not None:
        env.append(_secret_env(ENV_HF_TOKEN, spec.model.hub_token))
    store = spec.storage.object_store
    if store is not None:  # the bucket, endpoint and region are in the stage config
        if store.access_key_id is not None:
            env.append(_secret_env(ENV_AWS_ACCESS_KEY_ID, store.access_key_id))
        if store.secret_access_key is not None:
            env.append(_secret_env(ENV_AWS_SECRET_ACCESS_KEY, store.secret_access_key))
    env += [var.manifest() for var in spec.resources.env]
    return env


def _command(job: api.LLMTrainingJob, rank: int) -> list[str]:
    """Rank 0: the Ray head (no dashboard: nothing uses it, and it would listen on the pod
    IP), then the driver, whose exit code is the stage's (contract.ExitCode). Other ranks:
    Ray workers, which end only when the head is gone: a retryable exit."""
    gpus = job.spec.resources.gpus_per_worker
    # Ray truncates a fractional CPU limit (900m -> 0), and a Ray node with no CPU runs no
    # Ray Train worker: say how many it has, at least one.
    cpus = f"--num-cpus={max(1, int(_cores(job.spec.resources.cpu)))}"
    if rank == 0:
        # RAY_ADDRESS names this very head; `ray start --head` must not try to join it.
        script = (
            f"env -u RAY_ADDRESS ray start --head --port={RAY_GCS_PORT} --node-ip-address=$POD_IP"
            f" --num-gpus={gpus} {cpus} --include-dashboard=false --disable-usage-stats"
            f" && exec llmtrain worker --stage-config {CONFIG_FILE}"
        )
    else:
        # sh is PID 1 here, which ignores signals it has no trap for: forward SIGTERM.
        # Waiting for the head's GCS is not a failure; losing it is a retryable one.
        script = (
            f"trap 'exit {ExitCode.RETRYABLE}' TERM;"
            " until ray health-check --address=$RAY_ADDRESS >/dev/null 2>&1; do sleep 2; done;"
            " ray start --address=$RAY_ADDRESS --node-ip-address=$POD_IP"
            f" --num-gpus={gpus} {cpus} --block & pid=$!;"
            " trap 'kill -TERM $pid' TERM; wait $pid; wait $pid;"
            f" exit {ExitCode.RETRYABLE}"
        )
    return ["/bin/sh", "-c", script]


def _cores(quantity: int | str) -> float:
    """CPUs in a Kubernetes CPU quantity: 8, "8", "7.5" or "500m"."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


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


# The `restricted` Pod Security profile, forced on every container of every job pod.
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def build_worker_pod(
    job: api.LLMTrainingJob,
    stage: str,
    attempt: int,
    rank: int,
    defaults: JobDefaults = JobDefaults(),
) -> Manifest:
    """One pod of the gang. Rank 0 is the Ray head and runs the driver; the rest join it.

    `spec.resources.podTemplate` adds to the pod (podtemplate.py says what it may add); the
    security context, the ServiceAccount and the token are set last, whatever it says."""
    r = job.spec.resources
    tpl = r.pod_template or PodTemplate()
    name = pod_name(job.metadata.name, stage, attempt, rank)
    ours = {
        **labels(job.metadata.name, stage, attempt),
        LABEL_RANK: str(rank),
        LABEL_ROLE: "head" if rank == 0 else "worker",
    }
    pvc = storage_claim(job, defaults)
    meta = _metadata(job, name, {**tpl.metadata.labels, **r.labels, **ours})
    annotations = {**tpl.metadata.annotations, **r.annotations}
    if annotations:
        meta["annotations"] = annotations
    extra = next((c for c in tpl.spec.containers if c.name == CONTAINER), None)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": r.image or defaults.image,
        "command": _command(job, rank),
        "env": _env(job, stage, attempt) + [e.manifest() for e in (extra.env if extra else [])],
        "resources": _resources(job),
        "volumeMounts": _mounts(job, pvc) + (_dump(extra.volume_mounts) if extra else []),
    }
    if extra and extra.env_from:
        container["envFrom"] = _dump(extra.env_from)
    if r.image_pull_policy:
        container["imagePullPolicy"] = r.image_pull_policy
    ports = _ports(rank, metrics_port(job, defaults))
    if ports:
        container["ports"] = ports
    sidecars = [c.manifest() for c in tpl.spec.containers if c.name != CONTAINER]
    grace = tpl.spec.termination_grace_period_seconds or TERMINATION_GRACE_SECONDS
    pod_spec: dict[str, Any] = {
        # Gang semantics: the operator, not the kubelet, decides about restarts.
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": attempt_name(job.metadata.name, stage, attempt),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "containers": [container, *sidecars],
        "volumes": _volumes(job, stage, attempt, pvc) + [v.source() for v in tpl.spec.volumes],
    }
    if tpl.spec.init_containers:
        pod_spec["initContainers"] = [c.manifest() for c in tpl.spec.init_containers]
    if tpl.spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _dump(tpl.spec.image_pull_secrets)
    if tpl.spec.runtime_class_name:
        pod_spec["runtimeClassName"] = tpl.spec.runtime_class_name
    if tpl.spec.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = copy.deepcopy(tpl.spec.topology_spread_constraints)
    if r.node_selector:
        pod_spec["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        pod_spec["tolerations"] = _dump(r.tolerations)
    if r.affinity:
        pod_spec["affinity"] = copy.deepcopy(r.affinity)
    if r.priority_class_name:
        pod_spec["priorityClassName"] = r.priority_class_name
    if r.scheduler_name:
        pod_spec["schedulerName"] = r.scheduler_name
    _lock_down(pod_spec, defaults.service_account)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def _lock_down(pod_spec: dict[str, Any], service_account: str | None) -> None:
    """What no job may change: restricted security on every container, the worker
    ServiceAccount (the namespace's `default` when the operator names none) and no token."""
    pod_spec["securityContext"] = copy.deepcopy(POD_SECURITY)
    for c in [*pod_spec["containers"], *pod_spec.get("initContainers", [])]:
        c["securityContext"] = copy.deepcopy(CONTAINER_SECURITY)
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["serviceAccountName"] = service_account or "default"


def _dump(value: Any) -> Any:
    """Models (or lists of them) as core/v1 JSON."""
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump(by_alias=True, exclude_none=True, mode="json")


def build_network_policy(
    job: api.LLMTrainingJob, stage: str, attempt: int, defaults: JobDefaults = JobDefaults()
) -> Manifest:
    """Ingress to the attempt's pods only from the same job's pods (Ray GCS, object store,
    NCCL), and to the driver's metrics port from `defaults.metrics_from`. The Ray ports carry
    no authentication, and the pods may hold a hub token: other workloads must not reach them.
    """
    lbls = labels(job.metadata.name, stage, attempt)
    selector = {k: lbls[k] for k in (LABEL_JOB, LABEL_STAGE, LABEL_ATTEMPT)}
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": {LABEL_JOB: job.metadata.name}}}]}
    ]
    if defaults.metrics_from:
        port = {"port": metrics_port(job, defaults), "protocol": "TCP"}
        ingress.append({"from": copy.deepcopy(list(defaults.metrics_from)), "ports": [port]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, attempt_name(job.metadata.name, stage, attempt), lbls),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_stage_objects(
    job: api.LLMTrainingJob, stage: str, attempt: int, defaults: JobDefaults = JobDefaults()
) -> list[Manifest]:
    """Everything one attempt needs, in creation order: ConfigMap, Service, (NetworkPolicy),
    pods by rank."""
    policy = (
        [build_network_policy(job, stage, attempt, defaults)] if defaults.network_policy else []
    )
    group = gang.pod_group(job, stage, attempt)
    return [
        build_config_map(job, stage, attempt, defaults),
        build_service(job, stage, attempt, defaults),
        *policy,
        *([group] if group else []),
        *(
            gang.pod_fields(
                job, stage, attempt, build_worker_pod(job, stage, attempt, rank, defaults)
            )
            for rank in range(job.spec.resources.workers)
        ),
    ]


def build_initializer_objects(
    job: api.LLMTrainingJob, attempt: int, defaults: JobDefaults = JobDefaults()
) -> list[Manifest]:
    """The job's initializer (docs/guide.md, Initializer and preflight): a ConfigMap with
    what it runs (trainer/inputs.py InitConfig) and one CPU-only pod, before any gang. It
    fetches hub and s3:// inputs to storage and runs the preflight; its verdict comes back
    as the container's termination message (FallbackToLogsOnError: a crash says why too)."""
    name = init_name(job.metadata.name, attempt)
    lbls = {
        **labels(job.metadata.name, INIT_STAGE, attempt),
        LABEL_RANK: "0",
        LABEL_ROLE: "initializer",
    }
    config = init_config(job, defaults).model_dump_json(by_alias=True, indent=2) + "\n"
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, name, lbls),
        "data": {JOB_CONFIG: config},
    }
    r, spec = job.spec.resources, job.spec
    own = spec.initializer.resources
    amounts = {
        "cpu": str(own.cpu or defaults.initializer_cpu),
        "memory": str(own.memory or defaults.initializer_memory),
    }
    env = [_secret_env(ENV_HF_TOKEN, spec.model.hub_token)] if spec.model.hub_token else []
    store = spec.storage.object_store
    if store is not None:  # s3:// inputs are read with the job's store and its keys
        if store.endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": store.endpoint})
        if store.access_key_id is not None:
            env.append(_secret_env("AWS_ACCESS_KEY_ID", store.access_key_id))
        if store.secret_access_key is not None:
            env.append(_secret_env("AWS_SECRET_ACCESS_KEY", store.secret_access_key))
    env += [var.manifest() for var in r.env]
    pvc = storage_claim(job, defaults)
    vols = [v for v in _volumes(job, INIT_STAGE, attempt, pvc) if v["name"] != "dshm"]
    for v in vols:
        if v["name"] == "config":
            v["configMap"] = {"name": name}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": r.image or defaults.image,
        "command": [
            "llmtrain",
            "initialize",
            "--job-config",
            INIT_CONFIG_FILE,
            "--termination-log",
            TERMINATION_LOG,
        ],
        "env": env,
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "volumeMounts": [m for m in _mounts(job, pvc) if m["name"] != "dshm"],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if r.image_pull_policy:
        container["imagePullPolicy"] = r.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator retries, within runPolicy.backoffLimit
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": vols,
    }
    tpl = r.pod_template
    if tpl is not None and tpl.spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _dump(tpl.spec.image_pull_secrets)
    if r.priority_class_name:
        pod_spec["priorityClassName"] = r.priority_class_name
    _lock_down(pod_spec, defaults.service_account)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(job, name, lbls)}
    pod["spec"] = pod_spec
    return [cm, pod]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # the stage config reads as JSON, not escapes
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: list[Manifest]) -> str:
    """Multi-document YAML, keys in builder order, multi-line strings as blocks."""
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False)
