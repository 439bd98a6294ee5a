"""Everything the operator and the trainer share, in one place: importable without torch.

    from llmtrain.trainer import contract
    cfg = contract.StageConfig.model_validate_json(path.read_text())   # the stage config file
    contract.checkpoint_dir(cfg.output_dir, 40)   # ".../checkpoints/checkpoint-40"
    contract.Progress.from_metrics(scraped)       # the operator: /metrics -> status.progress
    sys.exit(contract.ExitCode.PERMANENT)         # the trainer: bad data, config or template
    contract.retryable(pod_exit_code)             # the operator: retry, or fail the job?

docs/contracts.md states the same for users, section by section: §1 the stage config
(`StageConfig`, `resolve_stages`), §2 environment variables, §3 the stage directory, §4 the
driver's metrics (`DRIVER_METRICS`) and the progress they feed (`Progress`), §6 exit codes.
tests/unit/test_contract_docs.py fails when the two drift apart.

Pure pydantic and the standard library (an import-linter contract keeps it so): the operator
image has no torch, ray or transformers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydantic import Field

from llmtrain.trainer.config import (
    CheckpointSpec,
    DistributedSpec,
    Model,
    ModelSpec,
    ProbeSpec,
    StageSpec,
)

# ---- §1 the stage config ---------------------------------------------------------------


class ObjectStoreConfig(Model):
    """Where a stage keeps what must outlive its pods, when not on a shared volume: an S3 API
    bucket (AWS, MinIO, Ceph RGW, SeaweedFS, GCS's XML API, R2). No credentials here: they
    come from the environment (`ENV_AWS_*`, §2)."""

    uri: str = Field(
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="s3://bucket/prefix: each stage's directory goes to `{uri}/{job}/{stage}`.",
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+/?$",
        description="S3 endpoint URL for a store other than AWS, e.g. http://minio:9000 or "
        "https://storage.googleapis.com. Empty: AWS.",
    )
    region: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]+$",
        description="Bucket region (AWS needs the right one; `auto` for R2). Empty: us-east-1 "
        "with an endpoint, else looked up.",
    )
    path_style: bool = Field(
        True,
        description="Path-style URLs (endpoint/bucket/key), which MinIO, Ceph RGW and "
        "SeaweedFS expect; false for virtual-hosted ones (bucket.endpoint/key).",
    )


class StageConfig(Model):
    """One stage, fully resolved: the file `llmtrain worker --stage-config` reads."""

    job: str = Field(description="Job name, used in metric labels.")
    namespace: str = Field("default", description="Job namespace, used in metric labels.")
    stage: StageSpec = Field(description="The stage to run.")
    model: ModelSpec = Field(description="Base model settings (tokenizer, dtype, code trust).")
    input_model: str | None = Field(
        None, description="Resolved path or hub id to start from; empty builds `architecture`."
    )
    reward_model: str | None = Field(None, description="Resolved reward model path (ppo/grpo).")
    output_dir: str = Field(description="Stage directory: checkpoints, final model, progress.")
    workers: int = Field(1, gt=0, description="Ray Train workers (pods x GPUs per pod).")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Backend.")
    checkpointing: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Saves.")
    object_store: ObjectStoreConfig | None = Field(
        None,
        description="Bucket the stage directory is kept in (uploaded, resumed from); "
        "empty: `output_dir` is shared storage.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the driver's /metrics; empty disables it."
    )
    probes: ProbeSpec | None = Field(None, description="The job's generation probes.")


def resolve_stages(
    *,
    job: str,
    namespace: str,
    model: ModelSpec,
    stages: list[StageSpec],
    storage_root: str,
    workers: int,
    distributed: DistributedSpec,
    checkpointing: CheckpointSpec,
    metrics_port: int | None,
    probes: ProbeSpec | None = None,
    object_store: ObjectStoreConfig | None = None,
) -> list[StageConfig]:
    """Resolve every stage of a job into the config its worker runs.

    The one place that decides model hand-off, so the operator and the local runner agree:
    a stage starts from `inputModel` (an earlier stage's `final/` or a path), else from the
    previous stage's `final/`, else from `spec.model` (a source, or `architecture`). With an
    object store, an earlier stage's `final/` is its `{uri}/{job}/{stage}/final` in the bucket.
    """
    if object_store is not None:  # the operator's ObjectStore adds Secret references
        object_store = ObjectStoreConfig.model_validate(
            object_store.model_dump(include=set(ObjectStoreConfig.model_fields))
        )
    handoff = object_store.uri if object_store is not None else storage_root
    out: list[StageConfig] = []
    for i, st in enumerate(stages):
        ref = st.input_model
        if ref is not None and ref.path:
            input_model: str | None = ref.path
        elif ref is not None and ref.from_stage:
            input_model = final_model_dir(handoff, job, ref.from_stage)
        elif i > 0:
            input_model = final_model_dir(handoff, job, stages[i - 1].name)
        else:
            input_model = model.source
        reward = (st.ppo.reward_model if st.ppo else None) or (
            st.grpo.reward_model if st.grpo else None
        )
        reward_model = None
        if reward is not None:
            reward_model = reward.path or final_model_dir(handoff, job, reward.from_stage or "")
        out.append(
            StageConfig(
                job=job,
                namespace=namespace,
                stage=st,
                model=model,
                input_model=input_model,
                reward_model=reward_model,
                output_dir=stage_dir(storage_root, job, st.name),
                workers=workers,
                distributed=distributed,
                checkpointing=checkpointing,
                metrics_port=metrics_port,
                probes=probes,
                object_store=object_store,
            )
        )
    return out


def localise(cfg: StageConfig, base: str | os.PathLike[str] = ".") -> StageConfig:
    """A copy of `cfg` whose local paths are absolute, so any working directory reads them.

    A relative path that exists under `base` (the job file's folder for `llmtrain run`, the
    working directory for `llmtrain worker`: Ray workers run elsewhere) becomes absolute;
    URIs, hub ids and paths that exist nowhere stay as they are. `output_dir` is always made
    absolute, since the stage creates it.
    """

    def fix(value: str | None) -> str | None:
        if not value or "://" in value or os.path.isabs(value):
            return value
        candidate = Path(base) / value
        return str(candidate.resolve()) if candidate.exists() else value

    out = cfg.model_copy(deep=True)
    out.output_dir = os.path.abspath(os.path.join(base, out.output_dir))
    out.input_model, out.reward_model = fix(out.input_model), fix(out.reward_model)
    out.model.source = fix(out.model.source)
    out.model.tokenizer.source = fix(out.model.tokenizer.source)
    st = out.stage
    st.dataset.source = fix(st.dataset.source) or st.dataset.source
    refs = [st.input_model]
    if st.ppo:
        refs.append(st.ppo.reward_model)
    if st.grpo:
        refs.append(st.grpo.reward_model)
    for ref in refs:
        if ref and ref.path:
            ref.path = fix(ref.path)
    return out


# ---- §2 environment variables -----------------------------------------------------------

# Set on the driver pod (rank 0) after `ray start --head`; `llmtrain worker` joins it, and
# starts a local Ray without it.
ENV_RAY_ADDRESS = "RAY_ADDRESS"
# A hub access token (spec.model.hubToken); the trainer passes it on to the Ray workers.
ENV_HF_TOKEN = "HF_TOKEN"


def hub_token() -> str | None:
    return os.environ.get(ENV_HF_TOKEN) or None


# Object store credentials (StageConfig.object_store): the standard AWS names, from the
# job's Secret references on a pod, from the user's environment in `llmtrain run`; passed on
# to the Ray Train workers.
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"


# ---- §3 the stage directory ({storage}/{job}/{stage} on a cluster) -----------------------

FINAL = "final"  # what the stage trained: a full model, or an adapter
MERGED = "merged"  # the adapter merged into its base (peft.merge)
CHECKPOINTS = "checkpoints"  # checkpoint-{step}/ each, complete with a COMPLETE marker
COMPLETE = "COMPLETE"  # inside a checkpoint (or final/, merged/): written last, then renamed
STAGING = ".staging"  # checkpoints/.staging/checkpoint-{step}/: one being written
PREPARED = "prepared"  # tokenised data, prepared once by the driver, read by every worker
PROGRESS = "progress.json"  # Progress fields plus alignment extras and updated_at
METRICS = "metrics.jsonl"  # one JSON object per logged step (the trainer's log history)
RESULT = "result.json"  # written last, on success: a retried stage that finds it is done
STOP_FILE = ".stop"  # created on SIGTERM/SIGINT: the workers checkpoint and stop
EVAL = "eval.json"  # an eval stage's metrics (also under "metrics" in result.json)
PROBES = "probes.json"  # the probes' prompts, answers and verdicts after the stage
# The driver's container writes the stage's result metrics here on success (JSON
# {"metrics": {...}}, at most 4 KiB): the kubelet puts it in the pod status, where the
# operator reads it to decide the stage's gates.
TERMINATION_LOG = "/dev/termination-log"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def stage_dir(storage_root: str, job: str, stage: str) -> str:
    """Where a stage writes everything."""
    return f"{storage_root.rstrip('/')}/{job}/{stage}"


def final_model_dir(storage_root: str, job: str, stage: str) -> str:
    """What a later stage starts from (its `input_model`)."""
    return f"{stage_dir(storage_root, job, stage)}/{FINAL}"


def stage_uri(cfg: StageConfig) -> str | None:
    """The stage directory's copy in the bucket, `{uri}/{job}/{stage}`, or None."""
    store = cfg.object_store
    return stage_dir(store.uri, cfg.job, cfg.stage.name) if store is not None else None


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder's name, or None for anything else."""
    m = _CHECKPOINT.match(name)
    return int(m.group(1)) if m else None


def checkpoint_dir(output_dir: str, step: int) -> str:
    return f"{output_dir}/{CHECKPOINTS}/{checkpoint_name(step)}"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically: readers (a progress view, a user's `cat`) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the stage directory, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- §4 the driver's metrics and the progress they feed ---------------------------------

LABELS = ("namespace", "job", "stage")
CHECKPOINT_STEP_METRIC = "llmtrain_checkpoint_step"


@dataclass(frozen=True)
class Metric:
    """One series family on the driver's /metrics."""

    name: str  # as scraped: counters end in _total
    type: str  # gauge or counter
    help: str
    # The progress field it feeds: a `Progress` field (the job status, progress.json) or a
    # progress.json extra (alignment stages).
    progress: str | None = None
    per_rank: bool = False  # one series per Ray Train worker, label `rank`


DRIVER_METRICS: tuple[Metric, ...] = (
    Metric("llmtrain_train_step", "gauge", "Optimizer steps done.", "step"),
    Metric("llmtrain_train_total_steps", "gauge", "Optimizer steps planned.", "total_steps"),
    Metric("llmtrain_train_loss", "gauge", "Latest training loss.", "loss"),
    Metric("llmtrain_eval_loss", "gauge", "Latest evaluation loss.", "eval_loss"),
    Metric("llmtrain_learning_rate", "gauge", "Current learning rate."),
    Metric("llmtrain_grad_norm", "gauge", "Latest gradient norm."),
    Metric(
        "llmtrain_tokens_per_second",
        "gauge",
        "Recent throughput in tokens per second.",
        "tokens_per_second",
    ),
    Metric("llmtrain_tokens_total", "counter", "Tokens processed."),
    Metric("llmtrain_samples_total", "counter", "Samples processed."),
    Metric("llmtrain_epoch", "gauge", "Fractional epoch.", "epoch"),
    Metric("llmtrain_eta_seconds", "gauge", "Estimated seconds left.", "eta_seconds"),
    Metric("llmtrain_stage_start_time_seconds", "gauge", "Unix time the stage started."),
    Metric(CHECKPOINT_STEP_METRIC, "gauge", "Step of the newest complete checkpoint."),
    Metric("llmtrain_overfitting", "gauge", "1 while eval loss rises as train loss falls."),
    Metric(
        "llmtrain_gpu_memory_allocated_bytes",
        "gauge",
        "GPU memory allocated by torch, per rank.",
        per_rank=True,
    ),
    Metric("llmtrain_reward_mean", "gauge", "Mean reward (alignment stages).", "reward_mean"),
    Metric(
        "llmtrain_reward_std",
        "gauge",
        "Reward standard deviation (alignment stages).",
        "reward_std",
    ),
    Metric("llmtrain_kl", "gauge", "KL divergence to the reference policy.", "kl"),
    Metric(
        "llmtrain_preference_margin",
        "gauge",
        "Chosen minus rejected reward (dpo, reward).",
        "preference_margin",
    ),
    Metric(
        "llmtrain_preference_accuracy",
        "gauge",
        "Fraction of pairs ranked correctly (dpo, reward).",
        "preference_accuracy",
    ),
    Metric(
        "llmtrain_generation_seconds_total",
        "counter",
        "Seconds spent generating (ppo, grpo).",
        "generation_seconds",
    ),
    Metric(
        "llmtrain_update_seconds_total",
        "counter",
        "Seconds spent updating the policy (ppo, grpo).",
        "update_seconds",
    ),
)
METRIC = {m.name: m for m in DRIVER_METRICS}


# No class docstring: the CRD generator would turn it into the description of every field
# of this type (StageStatus.progress has its own).
class Progress(Model):
    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(0, ge=0, description="Optimizer steps planned.")
    loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest evaluation loss.")
    tokens_per_second: float | None = Field(None, description="Recent throughput.")
    eta_seconds: float | None = Field(None, description="Estimated seconds left in the stage.")
    epoch: float | None = Field(None, description="Fractional epoch.")

    @classmethod
    def from_metrics(
        cls, values: Mapping[str, float], previous: Progress | None = None
    ) -> Progress:
        """The progress a scrape of the driver shows (finite sample values by name); a field
        whose metric is missing keeps its `previous` value."""
        fields = (previous or cls()).model_dump()
        for metric, field in PROGRESS_METRICS.items():
            if metric in values:
                value = values[metric]
                fields[field] = int(value) if field in ("step", "total_steps") else value
        return cls(**fields)


# Metric -> the Progress field it feeds: how the operator turns a scrape into status.progress.
PROGRESS_METRICS: dict[str, str] = {
    m.name: m.progress
    for m in DRIVER_METRICS
    if m.progress is not None and m.progress in Progress.model_fields
}


# ---- §6 exit codes ----------------------------------------------------------------------


class ExitCode(IntEnum):
    """How `llmtrain worker` (the driver, rank 0) and Ray worker pods end."""

    SUCCEEDED = 0
    # The job's own problem, found at start or in a worker: bad data, a missing dataset, a
    # chat template without generation marks, a bad config. Retrying cannot help.
    PERMANENT = 2
    # EX_TEMPFAIL: the infrastructure failed (a Ray worker died, a node or the head was
    # lost, a network error). Retry from the newest complete checkpoint.
    RETRYABLE = 75


def retryable(exit_code: int | None) -> bool:
    """Every failure is retried within the backoff limit except PERMANENT: unknown codes,
    signals (128+n, e.g. 137 for an OOM kill) and a missing code all count as transient."""
    return exit_code != ExitCode.PERMANENT
