"""Stage-level configuration shared by the API, the operator and the trainer.

Pure pydantic with no torch import, so the operator may import it (CONVENTIONS §8).
The job API (`llmtrain.operator.api`) composes these blocks into `LLMTrainingJob.spec`;
the operator and the local runner resolve one stage into a `StageConfig` and write it
as JSON for `llmtrain worker --stage-config FILE`:

    cfg = StageConfig.model_validate_json(path.read_text())
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """Base for every spec block: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        allow_inf_nan=False,  # JSON (and so the apiserver) cannot carry them
        use_enum_values=True,
        validate_default=True,
    )


def cel(*rules: tuple[str, ...] | tuple[str, str, str | None, str]) -> dict[str, Any]:
    """`json_schema_extra` for CEL `x-kubernetes-validations`, one tuple per rule:
    (rule, message[, messageExpression[, fieldPath]]). The messageExpression names the culprit
    (a stage name, a value); fieldPath makes the apiserver report the field, not the object."""
    out = []
    for rule, message, *rest in rules:
        item = {"rule": rule, "message": message}
        if rest and rest[0]:
            item["messageExpression"] = rest[0]
        if len(rest) > 1 and rest[1]:
            item["fieldPath"] = rest[1]
        out.append(item)
    return {"x-kubernetes-validations": out}


class StageType(StrEnum):
    pretrain = "pretrain"
    sft = "sft"
    reward = "reward"
    dpo = "dpo"
    ppo = "ppo"
    grpo = "grpo"


class DType(StrEnum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SecretKeyRef(Model):
    name: str = Field(min_length=1, description="Name of a Secret in the job's namespace.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class TokenizerSpec(Model):
    source: str | None = Field(
        None,
        description="Hub id or local path of the tokenizer. Defaults to the model source.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")


class ModelSpec(Model):
    source: str | None = Field(
        None,
        description="Hub id (org/name), local or PVC path, or URI of the base model. "
        "Leave empty and set `architecture` to pretrain from scratch.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    architecture: dict[str, Any] | None = Field(
        None,
        description="Hugging Face config dict for a model built from scratch, e.g. "
        "{model_type: llama, hidden_size: 64, ...}. Used when `source` is empty.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    tokenizer: TokenizerSpec = Field(
        default_factory=TokenizerSpec, description="Tokenizer to use with the model."
    )
    dtype: DType = Field(
        DType.auto,
        description="Weight dtype. `auto` picks bfloat16 on GPUs that support it, float32 on CPU.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub to run. Off unless you trust the source."
    )
    hub_token: SecretKeyRef | None = Field(
        None, description="Secret holding a hub access token, exposed to workers as HF_TOKEN."
    )


class DataFormat(StrEnum):
    text = "text"
    prompt_completion = "prompt-completion"
    messages = "messages"
    preference = "preference"
    prompt_only = "prompt-only"


class Columns(Model):
    text: str = Field("text", description="Column with raw text (format `text`).")
    prompt: str = Field("prompt", description="Column with the prompt.")
    completion: str = Field("completion", description="Column with the completion.")
    messages: str = Field("messages", description="Column with a list of chat messages.")
    chosen: str = Field("chosen", description="Column with the preferred response.")
    rejected: str = Field("rejected", description="Column with the dispreferred response.")
    answer: str = Field(
        "answer", description="Column with a reference answer, used by rule-based rewards."
    )


class Preprocessing(Model):
    drop_empty: bool = Field(True, description="Drop samples whose text fields are empty.")
    drop_overlong: bool = Field(
        False,
        description="Drop samples longer than `maxSeqLength` tokens instead of truncating them.",
    )
    deduplicate: bool = Field(True, description="Remove exact duplicate samples.")
    normalize_whitespace: bool = Field(
        False, description="Collapse runs of spaces and tabs and strip surrounding whitespace."
    )


class DatasetSpec(Model):
    source: str = Field(
        min_length=1,
        description="Local file (jsonl, json, parquet, csv, txt), a directory written by "
        "`save_to_disk`, a URI, or a hub dataset id.",
    )
    name: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Split to train on.")
    format: DataFormat = Field(description="Shape of each sample.")
    columns: Columns = Field(
        default_factory=Columns, description="Maps the logical fields to your column names."
    )
    eval_split: str | None = Field(
        None, description="Split used for evaluation. When empty, `evalFraction` is held out."
    )
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="Fraction of the training split held out for evaluation."
    )
    max_samples: int | None = Field(
        None, gt=0, description="Use at most this many training samples (for quick trials)."
    )
    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing, description="Cleaning applied before training."
    )


class PeftMethod(StrEnum):
    none = "none"
    lora = "lora"
    qlora = "qlora"
    dora = "dora"


class PeftSpec(Model):
    method: PeftMethod = Field(PeftMethod.none, description="Full fine-tuning or an adapter.")
    r: int = Field(16, gt=0, le=1024, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None,
        max_length=64,
        description="Module names to adapt. Empty means all linear layers.",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    merge: bool = Field(
        False, description="Also save a merged full model next to the adapter at the end."
    )


class Scheduler(StrEnum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"


class Hyperparameters(Model):
    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data; `maxSteps` overrides it.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Samples per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per step.")
    max_seq_length: int = Field(1024, gt=0, description="Longest sequence in tokens.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    scheduler: Scheduler = Field(Scheduler.cosine, description="Learning-rate schedule.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, ge=0, description="Seed for data order and initialisation.")
    packing: bool = Field(
        False, description="Pack several samples into each sequence (pretrain always packs)."
    )
    logging_steps: int = Field(10, gt=0, description="Log metrics every N steps.")
    eval_steps: int | None = Field(
        None, gt=0, description="Evaluate every N steps. Empty means once per epoch."
    )
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without eval-loss improvement."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")


class ModelRef(Model):
    """Where a stage takes a model from: an earlier stage's output or a path."""

    # maxLength bounds the cost of the CRD's CEL rules that compare it with stage names.
    from_stage: str | None = Field(None, max_length=40, description="Name of an earlier stage.")
    path: str | None = Field(
        None, max_length=1024, description="Local, PVC or URI path of a model."
    )


class DPOLossType(StrEnum):
    sigmoid = "sigmoid"
    ipo = "ipo"
    hinge = "hinge"
    robust = "robust"


class DPOParams(Model):
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL penalty.")
    loss_type: DPOLossType = Field(DPOLossType.sigmoid, description="DPO loss variant.")
    precompute_ref_log_probs: bool = Field(
        False, description="Compute reference log-probabilities once before training."
    )


class PPOParams(Model):
    reward_model: ModelRef = Field(description="Reward model: a reward stage or a path.")
    kl_coef: float = Field(0.05, ge=0, description="KL penalty against the reference policy.")
    response_length: int = Field(64, gt=0, description="Tokens generated per response.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature.")
    mini_batch_size: int = Field(4, gt=0, description="Samples per PPO update mini-batch.")
    ppo_epochs: int = Field(4, gt=0, description="Optimisation passes over each rollout batch.")


class RuleReward(StrEnum):
    exact_match = "exact-match"
    regex_format = "format"
    length_penalty = "length-penalty"


class GRPOParams(Model):
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt.")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the reference policy.")
    reward_model: ModelRef | None = Field(
        None, description="Reward model from a reward stage or a path."
    )
    reward_functions: list[RuleReward] = Field(
        default_factory=list, max_length=8, description="Built-in rule rewards, summed."
    )
    format_regex: str = Field(
        r"^.+$", description="Pattern a completion must match for the `format` reward."
    )
    target_length: int = Field(
        64, gt=0, description="Completions longer than this are penalised (`length-penalty`)."
    )
    max_completion_length: int = Field(64, gt=0, description="Tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")


# The one table of what each stage type needs: the API's validation (Python and CEL) and
# each stage module's data loading read it.
STAGE_FORMATS: dict[StageType, tuple[DataFormat, ...]] = {
    StageType.pretrain: (DataFormat.text,),
    StageType.sft: (DataFormat.prompt_completion, DataFormat.messages, DataFormat.text),
    StageType.reward: (DataFormat.preference,),
    StageType.dpo: (DataFormat.preference,),
    StageType.ppo: (DataFormat.prompt_only,),
    StageType.grpo: (DataFormat.prompt_only,),
}


def _formats_cel() -> str:
    table = ", ".join(
        f"'{t}': [{', '.join(repr(str(f)) for f in fs)}]" for t, fs in STAGE_FORMATS.items()
    )
    return "{" + table + "}"


class StageSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!has(self.dpo) || self.type == 'dpo'", "dpo is only allowed on dpo stages"),
            ("!has(self.ppo) || self.type == 'ppo'", "ppo is only allowed on ppo stages"),
            ("!has(self.grpo) || self.type == 'grpo'", "grpo is only allowed on grpo stages"),
            ("self.type != 'ppo' || has(self.ppo)", "ppo stages need ppo.rewardModel"),
            (
                f"self.dataset.format in {_formats_cel()}[self.type]",
                "does not fit the stage type: "
                + "; ".join(f"{t} needs {' or '.join(fs)}" for t, fs in STAGE_FORMATS.items()),
                None,
                ".dataset.format",
            ),
            (
                "self.type != 'grpo' || (has(self.grpo) && (has(self.grpo.rewardModel) ||"
                " (has(self.grpo.rewardFunctions) && self.grpo.rewardFunctions.size() > 0)))",
                "grpo stages need grpo.rewardModel or grpo.rewardFunctions",
            ),
            (
                "!has(self.inputModel) || (has(self.inputModel.fromStage) != "
                "has(self.inputModel.path))",
                "inputModel needs exactly one of fromStage or path",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Unique stage name; a DNS label, used in pod names.",
    )
    type: StageType = Field(description="Training algorithm of this stage.")
    input_model: ModelRef | None = Field(
        None,
        description="Model to start from. Defaults to the previous stage's output, or "
        "`spec.model` for the first stage.",
    )
    dataset: DatasetSpec = Field(description="Training data.")
    peft: PeftSpec = Field(default_factory=PeftSpec, description="Adapter settings.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Optimisation settings."
    )
    dpo: DPOParams | None = Field(None, description="DPO settings (type dpo).")
    ppo: PPOParams | None = Field(None, description="PPO settings (type ppo).")
    grpo: GRPOParams | None = Field(None, description="GRPO settings (type grpo).")


class DistributedStrategy(StrEnum):
    deepspeed = "deepspeed"
    ddp = "ddp"


class MixedPrecision(StrEnum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    no = "no"


class DistributedSpec(Model):
    strategy: DistributedStrategy = Field(
        DistributedStrategy.ddp, description="DeepSpeed ZeRO or plain DDP."
    )
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    offload: bool = Field(False, description="Offload optimizer state (and ZeRO-3 params) to CPU.")
    mixed_precision: MixedPrecision = Field(
        MixedPrecision.auto, description="`auto` is bf16 on GPUs that support it, fp32 on CPU."
    )


class CheckpointSpec(Model):
    every_steps: int = Field(100, gt=0, description="Save a checkpoint every N steps.")
    keep: int = Field(2, gt=0, description="Keep the newest K complete checkpoints.")


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
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the driver's /metrics; empty disables it."
    )


def stage_dir(storage_root: str, job: str, stage: str) -> str:
    """Where a stage writes everything (docs/contracts.md §3)."""
    return f"{storage_root.rstrip('/')}/{job}/{stage}"


def final_model_dir(storage_root: str, job: str, stage: str) -> str:
    return f"{stage_dir(storage_root, job, stage)}/final"


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
) -> list[StageConfig]:
    """Resolve every stage of a job into the config its worker runs.

    The one place that decides model hand-off, so the operator and the local runner agree:
    a stage starts from `inputModel` (an earlier stage's `final/` or a path), else from the
    previous stage's `final/`, else from `spec.model` (a source, or `architecture`).
    """
    out: list[StageConfig] = []
    for i, st in enumerate(stages):
        ref = st.input_model
        if ref is not None and ref.path:
            input_model: str | None = ref.path
        elif ref is not None and ref.from_stage:
            input_model = final_model_dir(storage_root, job, ref.from_stage)
        elif i > 0:
            input_model = final_model_dir(storage_root, job, stages[i - 1].name)
        else:
            input_model = model.source
        reward = (st.ppo.reward_model if st.ppo else None) or (
            st.grpo.reward_model if st.grpo else None
        )
        reward_model = None
        if reward is not None:
            reward_model = reward.path or final_model_dir(
                storage_root, job, reward.from_stage or ""
            )
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
            )
        )
    return out
