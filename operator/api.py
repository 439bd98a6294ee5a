"""The `LLMTrainingJob` API (llmtrain.io/v1alpha1): the one source of truth.

Parse once at the edge, then pass typed models around:

    job = parse_job(yaml.safe_load(text))        # raises SpecError listing every problem
    for p in validate_job(doc): print(p)        # or collect `Problem`s without raising

`llmtrain crd` turns these models into `crds/llmtrainingjobs.yaml` (see `crd.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from llmtrain.operator.podtemplate import EnvVar, PodTemplate, Quantity
from llmtrain.operator.podtemplate import problems as pod_template_problems
from llmtrain.trainer.config import (
    CheckpointSpec,
    DistributedSpec,
    Model,
    ModelSpec,
    ProbeSpec,
    SecretKeyRef,
    StageSpec,
    StageType,
    cel,
    stage_problems,
)
from llmtrain.trainer.contract import ObjectStoreConfig, Progress

GROUP = "llmtrain.io"
VERSION = "v1alpha1"
KIND = "LLMTrainingJob"
PLURAL = "llmtrainingjobs"
SINGULAR = "llmtrainingjob"
SHORT_NAMES = ["llmtj"]
API_VERSION = f"{GROUP}/{VERSION}"

# Job names end up in pod names (`{job}-{stage}-a{attempt}-{rank}`, at most 63 characters).
NAME_MAX = 40
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Toleration(Model):
    key: str | None = Field(None, description="Taint key to tolerate.")
    operator: str | None = Field(None, description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value for Equal.")
    effect: str | None = Field(None, description="NoSchedule, PreferNoSchedule or NoExecute.")
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is ok.")


class Resources(Model):
    workers: int = Field(1, ge=1, le=512, description="Pods per stage; rank 0 is the Ray head.")
    gpus_per_worker: int = Field(1, ge=0, le=16, description="`nvidia.com/gpu` per pod.")
    cpu: Quantity = Field("8", description="CPU request and limit per pod.")
    memory: Quantity = Field("64Gi", description="Memory request and limit per pod.")
    shm_size: Quantity = Field("16Gi", description="Size of /dev/shm (NCCL, Ray).")
    image: str | None = Field(
        None, description="Trainer image. Defaults to the operator's configured trainer image."
    )
    image_pull_policy: str | None = Field(None, description="Always, IfNotPresent or Never.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations.")
    affinity: dict[str, Any] | None = Field(
        None,
        description="Pod affinity (core/v1 Affinity).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(None, description="Pod priorityClassName.")
    scheduler_name: str | None = Field(
        None, description="Pod schedulerName, e.g. a gang scheduler."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra pod labels (Kueue's queue-name goes on the job itself).",
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    pod_template: PodTemplate | None = Field(
        None,
        description="Additions to every pod: labels, annotations, volumes and mounts, env, "
        "sidecars, init containers, image pull secrets, runtime class. An allow-list: "
        "securityContext, ServiceAccount, host namespaces and hostPath cannot be set.",
    )


# The stage config's bucket settings, plus where the pods get the credentials.
class ObjectStore(ObjectStoreConfig):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.accessKeyId) == has(self.secretAccessKey)",
                "set accessKeyId and secretAccessKey together",
            ),
        )
    )

    access_key_id: SecretKeyRef | None = Field(
        None, description="Secret with the access key id (AWS_ACCESS_KEY_ID in the pods)."
    )
    secret_access_key: SecretKeyRef | None = Field(
        None, description="Secret with the secret key (AWS_SECRET_ACCESS_KEY in the pods)."
    )


class PVCStorage(Model):
    claim_name: str = Field(min_length=1, description="PersistentVolumeClaim shared by all pods.")
    sub_path: str | None = Field(None, description="Directory inside the volume.")


class Storage(Model):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!(has(self.pvc) && has(self.objectStore))", "set pvc or objectStore, not both"),
        )
    )

    pvc: PVCStorage | None = Field(None, description="Shared volume for checkpoints and outputs.")
    object_store: ObjectStore | None = Field(
        None, description="S3 API bucket for checkpoints and outputs (docs/guide.md)."
    )
    mount_path: str = Field("/storage", pattern=r"^/", description="Where workers mount storage.")


class RunPolicy(Model):
    backoff_limit: int = Field(3, ge=0, description="Retries of a stage before the job fails.")
    active_deadline_seconds: int | None = Field(
        None, gt=0, description="Fail the job when it runs longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it finishes."
    )
    stall_timeout_seconds: int | None = Field(
        1800, gt=0, description="Restart an attempt whose step has not advanced for this long."
    )


class Monitoring(Model):
    # No schema default: the apiserver would store it in every job, and the operator's
    # configured port (`llmtrain operator --driver-metrics-port`) could never apply.
    metrics_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="Driver /metrics port. Default: the operator's `--driver-metrics-port` (9400).",
    )


class InitializerResources(Model):
    cpu: Quantity | None = Field(
        None, description="CPU request and limit. Default: the operator's (chart initializer)."
    )
    memory: Quantity | None = Field(
        None, description="Memory request and limit. Default: the operator's."
    )


class Initializer(Model):
    resources: InitializerResources = Field(
        default_factory=InitializerResources,
        description="The initializer pod's resources: one CPU-only pod that fetches the "
        "model and datasets to storage and runs the preflight before any GPU is held.",
    )
    gpu_memory: Quantity | None = Field(
        None,
        description="Memory of one GPU, e.g. 80Gi: a stage whose estimate exceeds it fails "
        "before its gang starts. Default: the operator's `--gpu-memory`.",
    )


_IMMUTABLE = (
    "model",
    "stages",
    "resources",
    "distributed",
    "storage",
    "checkpointing",
    "monitoring",
)


MAX_STAGES = 16
# CEL has no cheap index loop: lists.range() and indexOf() cost the CRD's whole rule budget
# in the apiserver's estimate, while a literal list of the possible indices does not.
_INDICES = "[" + ", ".join(map(str, range(MAX_STAGES))) + "]"


def _refs_earlier(field: str, what: str, reward_only: bool = False) -> tuple[str, str, None, str]:
    """CEL: every `fromStage` at `field` (a path below a stage) names an earlier stage. (A
    messageExpression naming the culprit's index exceeds the apiserver's cost budget;
    `llmtrain validate` names it.)"""
    at = "self.stages[i]"
    guard = " || ".join(f"!has({at}.{p})" for p in [*_prefixes(field), f"{field}.fromStage"])
    match = f"self.stages[j].name == {at}.{field}.fromStage"
    if reward_only:
        match += " && self.stages[j].type == 'reward'"
    rule = (
        f"{_INDICES}.all(i, i >= self.stages.size() || {guard} ||"
        f" {_INDICES}.exists(j, j < i && {match}))"
    )
    return rule, f"every {field}.fromStage must name {what}", None, ".stages"


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


class Gang(StrEnum):
    none = "none"
    podgroup = "podgroup"


class Scheduling(Model):
    gang: Gang = Field(
        Gang.none,
        description="All-or-nothing scheduling without Kueue: `podgroup` creates a "
        "scheduler-plugins coscheduling PodGroup (minMember = workers) per stage attempt and "
        "sets the pods' schedulerName (resources.schedulerName, else "
        "scheduler-plugins-scheduler); `none` leaves scheduling to the default scheduler.",
    )


# Each pod of a bucket job keeps its inputs and checkpoints on its own emptyDir, so only a
# one-pod gang sees what its driver prepared and pulled.
ONE_POD_STORE = (
    "holds one pod's outputs: a stage of several pods (resources.workers > 1) needs a "
    "ReadWriteMany pvc"
)


class LLMTrainingJobSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=cel(
            _refs_earlier("inputModel", "an earlier stage"),
            _refs_earlier("ppo.rewardModel", "an earlier reward stage", reward_only=True),
            _refs_earlier("grpo.rewardModel", "an earlier reward stage", reward_only=True),
            (
                "!has(self.storage) || !has(self.storage.objectStore) || !has(self.resources)"
                " || !has(self.resources.workers) || self.resources.workers == 1",
                ONE_POD_STORE,
                None,
                ".storage.objectStore",
            ),
            *(
                (
                    # has(): the optional blocks have no CRD default, and comparing a
                    # missing field is an error that would reject every status write.
                    f"oldSelf.suspend == true || (has(self.{f}) == has(oldSelf.{f})"
                    f" && (!has(self.{f}) || self.{f} == oldSelf.{f}))",
                    "is immutable while the job is not suspended",
                    None,
                    f".{f}",
                )
                for f in _IMMUTABLE
            ),
        )
    )

    model: ModelSpec = Field(description="Base model, tokenizer and loading options.")
    stages: list[StageSpec] = Field(
        min_length=1,
        max_length=MAX_STAGES,
        description="Stages, run in order; each feeds the next. Names are unique.",
        # A list-map keyed by name: the apiserver refuses a duplicate name with its index.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: Resources = Field(default_factory=Resources, description="Pods of each stage.")
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Data-parallel backend."
    )
    storage: Storage = Field(default_factory=Storage, description="Checkpoints and outputs.")
    checkpointing: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="How often to checkpoint."
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries and limits.")
    scheduling: Scheduling = Field(
        default_factory=Scheduling,
        description="Gang scheduling without Kueue (Kueue: label the job with its queue-name).",
    )
    suspend: bool = Field(
        False, description="Remove the pods (after a checkpoint) and create none (Kueue)."
    )
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Metrics.")
    initializer: Initializer = Field(
        default_factory=Initializer, description="Fetching inputs and the preflight."
    )
    probes: ProbeSpec | None = Field(
        None,
        description="Generation probes run after every stage: how the answers change from "
        "stage to stage (probes.json in each stage directory, the run report).",
    )


class Phase(StrEnum):
    Pending = "Pending"
    Initializing = "Initializing"
    Running = "Running"
    Restarting = "Restarting"
    Suspended = "Suspended"
    Queued = "Queued"  # waiting for Kueue to admit the stage's Workload
    Succeeded = "Succeeded"
    Failed = "Failed"


class Condition(Model):
    type: str = Field(description="Condition type, e.g. Running, Succeeded, Failed.")
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field("", description="Machine-readable CamelCase reason.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: str | None = Field(None, description="When status last changed.")


class GateStatus(Model):
    metric: str = Field(description="The stage's result metric.")
    min: float | None = Field(None, description="Lower bound.")
    max: float | None = Field(None, description="Upper bound.")
    value: float | None = Field(None, description="The value the stage reported.")
    passed: bool = Field(description="Whether the value is within the bounds.")
    message: str = Field(
        "", description="The verdict, e.g. `evalLoss = 1.7, outside gate max 1.2`."
    )


class StagePreflight(Model):
    stage: str = Field(description="Stage name.")
    kept: int | None = Field(None, description="Training examples kept.")
    dropped: int | None = Field(None, description="Examples dropped (empty, duplicate, too long).")
    truncated: int | None = Field(None, description="Examples cut at maxSeqLength.")
    tokens_p50: int | None = Field(None, description="Median tokens per example.")
    tokens_p90: int | None = Field(None, description="90th percentile of tokens per example.")
    tokens_p99: int | None = Field(None, description="99th percentile of tokens per example.")
    tokens_max: int | None = Field(None, description="Longest example in tokens.")
    memory_bytes: int | None = Field(None, description="Estimated memory per GPU.")


class InitializerStatus(Model):
    phase: Phase = Field(Phase.Pending, description="Pending, Running, Succeeded or Failed.")
    attempt: int = Field(0, ge=0, description="Current attempt, starting at 1.")
    restarts: int = Field(0, ge=0, description="Attempts that failed and were retried.")
    message: str | None = Field(None, description="Why it is in its phase.")
    retry_after: str | None = Field(None, description="While Restarting: when it runs again.")
    preflight: list[StagePreflight] = Field(
        default_factory=list, description="The preflight's figures per stage."
    )


class StageStatus(Model):
    name: str = Field(description="Stage name.")
    phase: Phase = Field(Phase.Pending, description="Phase of this stage.")
    attempt: int = Field(0, ge=0, description="Current attempt, starting at 1.")
    restarts: int = Field(0, ge=0, description="Attempts that failed and were retried.")
    start_time: str | None = Field(None, description="When the first attempt started.")
    completion_time: str | None = Field(None, description="When the stage finished.")
    progress: Progress = Field(default_factory=Progress, description="Latest progress.")
    last_progress_time: str | None = Field(
        None, description="When the step last advanced (the stall watchdog's clock)."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest metric values.")
    last_checkpoint: str | None = Field(None, description="Newest complete checkpoint.")
    output: str | None = Field(None, description="Where the stage's final model was written.")
    message: str | None = Field(None, description="Why the stage is in its phase.")
    retry_after: str | None = Field(
        None, description="While Restarting: when the next attempt starts (retry backoff)."
    )
    gates: list[GateStatus] = Field(
        default_factory=list, description="The stage's gates, decided when it succeeded."
    )


class LLMTrainingJobStatus(Model):
    phase: Phase = Field(Phase.Pending, description="Phase of the job.")
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations.")
    current_stage: str | None = Field(None, description="Stage running now.")
    stage_summary: str | None = Field(
        None, description="The current stage and its position, e.g. `dpo (2/3)`."
    )
    restarts: int = Field(0, ge=0, description="Stage attempts retried, over all stages.")
    reason: str | None = Field(None, description="Reason of the latest transition.")
    stages: list[StageStatus] = Field(default_factory=list, description="Per-stage status.")
    progress: str | None = Field(None, description="Current stage progress, e.g. '120/400'.")
    loss: float | None = Field(None, description="Latest training loss of the current stage.")
    observed_generation: int | None = Field(None, description="Spec generation last acted on.")
    start_time: str | None = Field(None, description="When the job started running.")
    completion_time: str | None = Field(None, description="When the job finished.")
    failed_gate: str | None = Field(
        None, description="The gate that stopped the job: `stage: metric = value, outside ...`."
    )
    initializer: InitializerStatus | None = Field(
        None, description="The initializer: inputs fetched, the preflight's figures."
    )


class ObjectMeta(Model):
    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX,
        pattern=DNS_LABEL,
        description=f"Job name; a DNS label of at most {NAME_MAX} characters (pod names).",
    )
    namespace: str | None = Field(None, description="Namespace.")


class LLMTrainingJob(Model):
    api_version: str = Field(API_VERSION, pattern=f"^{re.escape(API_VERSION)}$")
    kind: str = Field(KIND, pattern=f"^{KIND}$")
    metadata: ObjectMeta
    spec: LLMTrainingJobSpec
    status: LLMTrainingJobStatus | None = None


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A job that does not validate; `problems` lists every one."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


_KEY = re.compile(r"^[A-Za-z_][\w-]*$")


def _path(loc: Iterable[int | str], root: str) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _KEY.match(part):
            out += f".{part}"
        else:  # odd keys (empty, spaces, dots) stay unambiguous
            out += f"[{json.dumps(part)}]"
    return out


_MESSAGES = [
    (re.compile(r"^Input should be (a valid )?"), "must be "),
    (re.compile(r"^Extra inputs are not permitted$"), "unknown field"),
    (re.compile(r"^Field required$"), "required"),
    (re.compile(r"^String should (have|match)"), r"must \1"),
    (re.compile(r"^List should have"), "must have"),
    (re.compile(r"^Value error, "), ""),
]


def _message(raw: str) -> str:
    for pattern, repl in _MESSAGES:
        raw = pattern.sub(repl, raw)
    return raw


# Pydantic appends the member type to the location of a failed union branch.
_UNION_TAGS = {
    "int": "an integer",
    "str": "a string",
    "float": "a number",
    "bool": "a boolean",
    "list": "a list",
    "dict": "a mapping",
}


def _pydantic_problems(e: ValidationError) -> list[Problem]:
    merged: dict[str, list[str]] = {}
    for error in e.errors():
        loc = list(error["loc"])
        # ...but an unknown key that happens to be called "int" is just an unknown key.
        if loc and loc[-1] in _UNION_TAGS and error["type"] != "extra_forbidden":
            path = _path(loc[:-1], "").lstrip(".")
            merged.setdefault(path, []).append(_UNION_TAGS[loc[-1]])
            continue
        merged.setdefault(_path(loc, "").lstrip(".") or "(document)", []).append(
            _message(error["msg"])
        )
    problems = []
    for path, messages in merged.items():
        if all(m in _UNION_TAGS.values() for m in messages):
            problems.append(Problem(path, "must be " + " or ".join(messages)))
        else:
            problems += [Problem(path, m) for m in messages]
    return problems


def _semantic_problems(model: ModelSpec | None, stages: list[StageSpec | Any]) -> list[Problem]:
    """Cross-field rules that a schema cannot state (or that CEL states too). Works on a
    partly valid spec too: `model` None and raw (unparsed) stages are skipped, but a raw
    stage's name and type still count for the stages that refer to it."""
    out: list[Problem] = []
    seen: dict[str, int] = {}
    reward_stages = set()
    for i, st in enumerate(stages):
        at = f"spec.stages[{i}]"
        if not isinstance(st, StageSpec):
            raw = st if isinstance(st, dict) else {}
            if isinstance(raw.get("name"), str):
                seen.setdefault(raw["name"], i)
                if raw.get("type") == StageType.reward:
                    reward_stages.add(raw["name"])
            continue
        if st.name in seen:
            out.append(Problem(f"{at}.name", f"duplicate stage name {st.name!r}"))
        refs = [("inputModel", st.input_model)]
        if st.ppo:
            refs.append(("ppo.rewardModel", st.ppo.reward_model))
        if st.grpo and st.grpo.reward_model:
            refs.append(("grpo.rewardModel", st.grpo.reward_model))
        for field, ref in refs:
            if ref is None:
                continue
            if (ref.from_stage is None) == (ref.path is None):
                out.append(Problem(f"{at}.{field}", "set exactly one of fromStage or path"))
            elif ref.from_stage is not None and ref.from_stage not in seen:
                out.append(
                    Problem(f"{at}.{field}.fromStage", f"no earlier stage named {ref.from_stage!r}")
                )
            elif field != "inputModel" and ref.from_stage and ref.from_stage not in reward_stages:
                out.append(
                    Problem(f"{at}.{field}.fromStage", f"{ref.from_stage!r} is not a reward stage")
                )
        # The per-stage rules (STAGE_RULES), worded as the driver words them at start-up.
        out += [Problem(f"{at}.{field}", message) for field, message in stage_problems(st)]
        if i == 0 and st.input_model is None and model and not (model.source or model.architecture):
            out.append(Problem("spec.model", "set source or architecture"))
        seen[st.name] = i
        if st.type == StageType.reward:
            reward_stages.add(st.name)
    return out


def validate_job(doc: Any) -> list[Problem]:
    """Every problem in a job document, in document order; empty when valid."""
    try:
        parse_job(doc)
    except SpecError as e:
        return e.problems
    return []


def parse_job(doc: Any) -> LLMTrainingJob:
    """Parse and fully validate a job document, or raise SpecError with all problems."""
    if not isinstance(doc, dict):
        raise SpecError([Problem("(document)", "must be a mapping (an LLMTrainingJob object)")])
    try:
        # camelCase only, as the apiserver reads it: a snake_case key is an unknown field.
        job = LLMTrainingJob.model_validate(doc, by_alias=True, by_name=False)
    except ValidationError as e:
        problems = _pydantic_problems(e)
        # Every problem at once: the cross-field rules still run on the parts that parse.
        problems += [p for p in _partial_semantic_problems(doc) if p not in problems]
        raise SpecError(problems) from None
    problems = _semantic_problems(job.spec.model, list(job.spec.stages))
    problems += _resource_problems(job.spec.resources, job.spec.storage)
    if problems:
        raise SpecError(problems)
    return job


def _resource_problems(resources: Resources | None, storage: Storage | None) -> list[Problem]:
    """The CEL rules of `spec.resources` and `spec.storage`, for `llmtrain validate`."""
    out: list[Problem] = []
    if storage is not None and storage.pvc is not None and storage.object_store is not None:
        out.append(Problem("spec.storage", "set pvc or objectStore, not both"))
    store = storage.object_store if storage is not None else None
    if store is not None and (store.access_key_id is None) != (store.secret_access_key is None):
        out.append(
            Problem("spec.storage.objectStore", "set accessKeyId and secretAccessKey together")
        )
    if resources is None:
        return out
    if store is not None and resources.workers > 1:
        out.append(Problem("spec.storage.objectStore", ONE_POD_STORE))
    for i, var in enumerate(resources.env):
        if var.value is not None and var.secret_key_ref is not None:
            out.append(Problem(f"spec.resources.env[{i}]", "set value or secretKeyRef, not both"))
    if resources.pod_template is not None:
        out += [
            Problem(f"spec.resources.podTemplate.{path}", message)
            for path, message in pod_template_problems(resources.pod_template)
        ]
    return out


def _partial_semantic_problems(doc: dict[str, Any]) -> list[Problem]:
    spec = doc.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        return []

    def parsed(cls: type[Model], raw: Any) -> Any:
        try:
            return cls.model_validate(raw, by_alias=True, by_name=False)
        except ValidationError:
            return None

    stages = [parsed(StageSpec, raw) or raw for raw in spec["stages"]]
    return _semantic_problems(parsed(ModelSpec, spec.get("model")), stages) + _resource_problems(
        parsed(Resources, spec.get("resources")), parsed(Storage, spec.get("storage"))
    )
