"""Names, labels and paths of a job's children: what the builders, the state machine and
`llmtrain render` agree on. Pure functions, no I/O.

    attempt_name("chat", "sft", 2)          # "chat-sft-a2": the ConfigMap, Service, policy
    pod_name("chat", "sft", 2, 0)           # "chat-sft-a2-0": rank 0, the Ray head + driver
    stage_config(job, "sft", defaults)      # the StageConfig the stage's driver reads
    cluster_problems(job, defaults)         # why a valid job cannot run in pods, if it cannot

Names are deterministic (`{job}-{stage}-a{attempt}-{rank}`), so creating an object twice is a
harmless 409.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from llmtrain.operator import api
from llmtrain.trainer import inputs
from llmtrain.trainer.contract import FINAL, StageConfig, resolve_stages
from llmtrain.trainer.inputs import JOB_CONFIG, InitConfig

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
    # A NetworkPolicy per attempt: the gang's pods admit only each other, and the driver's
    # metrics port admits `metrics_from` (NetworkPolicyPeers: the operator, Prometheus).
    network_policy: bool = False
    metrics_from: tuple[dict[str, Any], ...] = ()
    # One CPU-only initializer pod per job before the first gang (fetch inputs, preflight);
    # its resources where the job sets none, and the GPU memory the preflight checks against.
    initializer: bool = False
    initializer_cpu: str = "2"
    initializer_memory: str = "8Gi"
    gpu_memory: int | None = None


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
    """Every stage resolved, with the same model hand-off rules as the local runner; with
    the initializer, reading its copies of hub and s3:// inputs from storage."""
    if defaults.initializer:
        return init_config(job, defaults).stages
    return _resolved(job, defaults)


# The initializer pod's stage label: no stage can have it (stage names are lowercase).
INIT_STAGE = "Initializer"
INIT_CONFIG_FILE = f"{CONFIG_DIR}/{JOB_CONFIG}"


def init_name(job: str, attempt: int) -> str:
    """The initializer's pod and ConfigMap: `{job}-init-{attempt}` (stage objects end in
    `-a{attempt}` or `-a{attempt}-{rank}`, so no stage's can be called that)."""
    return _bounded(f"{job}-init-{attempt}")


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20,
          "Gi": 2**30, "Ti": 2**40}  # fmt: skip


def quantity_bytes(value: int | str | None) -> int | None:
    """A memory quantity ("80Gi", "81920Mi", 8e10) in bytes."""
    if value is None or value == "":
        return None
    text = str(value)
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if u and text.endswith(u)), "")
    return int(float(text[: len(text) - len(unit)]) * _UNITS[unit])


def init_config(job: api.LLMTrainingJob, defaults: JobDefaults = JobDefaults()) -> InitConfig:
    """What the initializer pod runs: the fetches, the stages as their pods will read them,
    the GPU memory to check the estimates against (the job's, else the operator's)."""
    spec = job.spec
    gpu = quantity_bytes(spec.initializer.gpu_memory) or defaults.gpu_memory
    return inputs.plan(
        _resolved(job, defaults),
        spec.storage.mount_path,
        job.metadata.name,
        namespace_of(job),
        gpu_memory=gpu if spec.resources.gpus_per_worker > 0 else None,
        device="cuda" if spec.resources.gpus_per_worker > 0 else "cpu",
    )


def _resolved(job: api.LLMTrainingJob, defaults: JobDefaults) -> list[StageConfig]:
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
        object_store=spec.storage.object_store,
        probes=spec.probes,
    )


def stage_config(
    job: api.LLMTrainingJob, stage: str, defaults: JobDefaults = JobDefaults()
) -> StageConfig:
    return stage_configs(job, defaults)[stage_index(job, stage)]


def stage_output(job: api.LLMTrainingJob, stage: str) -> str:
    """Where a finished stage's model lives, as recorded in status.stages[].output."""
    out = f"{stage_config(job, stage).output_dir}/{FINAL}"
    store = job.spec.storage.object_store
    if store is not None:
        # The trainer uploads the stage directory under the bucket with the same layout.
        prefix = job.spec.storage.mount_path.rstrip("/")
        return store.uri.rstrip("/") + out[len(prefix) :]
    return out


# Paths that mean a file next to the job manifest in a local run, and nothing in a pod.
_LOCAL_FILE = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow")


def cluster_problems(job: api.LLMTrainingJob, defaults: JobDefaults) -> list[api.Problem]:
    """What makes a valid job unable to run on a cluster with these defaults, although
    `llmtrain run` runs it: outputs that cannot outlive a pod, paths relative to a laptop."""
    out: list[api.Problem] = []
    spec = job.spec
    if spec.storage.object_store is None and storage_claim(job, defaults) is None:
        out.append(
            api.Problem(
                "spec.storage",
                "no storage that outlives the pods: the model would be lost with them, a "
                "later stage or another worker could not read it, and a retry would find no "
                "checkpoint; set storage.pvc.claimName (a ReadWriteMany claim) or "
                "storage.objectStore (or run the operator with a default PVC)",
            )
        )
    paths = [
        ("spec.model.source", spec.model.source),
        ("spec.model.tokenizer.source", spec.model.tokenizer.source),
    ]
    for i, st in enumerate(spec.stages):
        at = f"spec.stages[{i}]"
        paths.append((f"{at}.dataset.source", st.dataset.source))
        paths.append((f"{at}.inputModel.path", st.input_model.path if st.input_model else None))
        for block in ("ppo", "grpo"):
            ref = getattr(getattr(st, block), "reward_model", None)
            paths.append((f"{at}.{block}.rewardModel.path", ref.path if ref else None))
    for where, value in paths:
        if value and _relative(value):
            out.append(
                api.Problem(
                    where,
                    f"relative path {value!r} means nothing in a pod: use an absolute path "
                    f"under storage.mountPath ({spec.storage.mount_path}/...) or a URI",
                )
            )
    return out


def _relative(value: str) -> bool:
    """A local relative path, as opposed to an absolute path, a URI or a hub id (`org/name`,
    which has no file extension)."""
    if value.startswith("/") or "://" in value:
        return False
    return value.startswith(("./", "../")) or value.endswith(_LOCAL_FILE)
