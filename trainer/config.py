"""The stage spec blocks shared by the API, the operator and the trainer, and the stage rules.

Pure pydantic with no torch import, so the operator may import it (CONVENTIONS §8).
The job API (`llmtrain.operator.api`) composes these blocks into `LLMTrainingJob.spec`;
`llmtrain.trainer.contract` resolves one stage into the `StageConfig` that
`llmtrain worker --stage-config FILE` runs:

    spec = StageSpec.model_validate({"name": "sft", "type": "sft", "dataset": {...}})
    problems = stage_problems(spec)        # what the stage type needs (STAGE_RULES)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator
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
    eval = "eval"  # no training: metrics of an earlier stage's model (eval.json)


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


class EvalMatch(StrEnum):
    exact = "exact"
    regex = "regex"


class EvalParams(Model):
    """What an eval stage measures beyond its dataset's own metric (text: perplexity,
    prompt-completion: exactMatch or regexMatch, preference: preferenceAccuracy)."""

    match: EvalMatch = Field(
        EvalMatch.exact,
        description="prompt-completion data: `exact` compares the greedy answer with the "
        "completion; `regex` takes the completion as a pattern the answer must contain.",
    )
    max_new_tokens: int = Field(
        32, gt=0, le=1024, description="Tokens generated per question (greedy)."
    )
    reference_model: ModelRef | None = Field(
        None,
        description="preference data: the reference of the implicit reward log p(y|x) - "
        "log p_ref(y|x). Empty: an adapter's base, or none for a full model.",
    )
    reward_model: ModelRef | None = Field(
        None, description="preference data: rank the pairs with this reward model instead."
    )
    task_dir: str | None = Field(
        None,
        max_length=1024,
        description="Folder of lm-evaluation-harness task YAMLs reading local data files.",
    )
    tasks: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="lm-evaluation-harness tasks to run (from `taskDir`); metrics "
        "`tasks.<task>.<metric>`.",
    )


# Gate metric names: the stage's result metrics (docs/guide.md lists them).
GATE_METRIC = (
    r"^(loss|evalLoss|perplexity|exactMatch|regexMatch|preferenceAccuracy|probes\.passRate"
    r"|tasks\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$"
)


class Gate(Model):
    model_config = ConfigDict(
        json_schema_extra=cel(("has(self.min) || has(self.max)", "a gate needs min or max"))
    )

    metric: str = Field(
        max_length=120,
        pattern=GATE_METRIC,
        description="Result metric of the stage: loss, evalLoss, perplexity, exactMatch, "
        "regexMatch, preferenceAccuracy, probes.passRate or tasks.<task>.<metric>.",
    )
    min: float | None = Field(None, description="Fail the job when the metric is below this.")
    max: float | None = Field(None, description="Fail the job when the metric is above this.")

    @model_validator(mode="after")
    def _bounded(self) -> Gate:
        if self.min is None and self.max is None:
            raise ValueError("a gate needs min or max")
        return self


def check_gates(gates: list[Gate], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One {metric, min, max, value, passed, message} per gate, against a stage's result
    metrics; a metric the stage did not report fails its gate. The operator and
    `llmtrain run` both decide with this."""
    out = []
    for g in gates:
        value = metrics.get(g.metric)
        bound = " and ".join(
            f"{op} {v:g}" for op, v in (("min", g.min), ("max", g.max)) if v is not None
        )
        if not isinstance(value, int | float) or isinstance(value, bool):
            value, passed, message = None, False, f"{g.metric} was not reported (gate {bound})"
        else:
            passed = (g.min is None or value >= g.min) and (g.max is None or value <= g.max)
            verdict = "within" if passed else "outside"
            message = f"{g.metric} = {value:.4g}, {verdict} gate {bound}"
        out.append(
            {"metric": g.metric, "min": g.min, "max": g.max, "value": value, "passed": passed,
             "message": message}
        )  # fmt: skip
    return out


class Probe(Model):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("has(self.contains) != has(self.regex)", "a probe needs one of contains or regex")
        )
    )

    prompt: str = Field(min_length=1, max_length=4096, description="Prompt, completed greedily.")
    contains: str | None = Field(None, max_length=1024, description="Expected substring.")
    regex: str | None = Field(None, max_length=1024, description="Pattern the answer must match.")

    @model_validator(mode="after")
    def _one_expectation(self) -> Probe:
        if (self.contains is None) == (self.regex is None):
            raise ValueError("a probe needs one of contains or regex")
        return self


class ProbeSpec(Model):
    prompts: list[Probe] = Field(
        min_length=1, max_length=32, description="Prompts, each with its expectation."
    )
    max_new_tokens: int = Field(16, gt=0, le=256, description="Tokens generated per prompt.")
    after_every_stage: bool = Field(
        True,
        description="Run after every stage (probes.json in the stage directory, the report's "
        "table); eval stages run them regardless.",
    )


class StageRule(NamedTuple):
    formats: tuple[DataFormat, ...]  # the data formats it trains on
    block: str | None = None  # its own settings block (StageSpec.dpo/ppo/grpo); no other type's
    from_model: bool = False  # it trains an existing model, so it needs an input model


# The one table of what each stage type needs: the API's validation (Python and CEL) and the
# driver's start-up checks (`stage_problems`) read it; the stage modules trust it.
STAGE_RULES: dict[StageType, StageRule] = {
    StageType.pretrain: StageRule((DataFormat.text,)),
    StageType.sft: StageRule((DataFormat.prompt_completion, DataFormat.messages, DataFormat.text)),
    StageType.reward: StageRule((DataFormat.preference,), from_model=True),
    StageType.dpo: StageRule((DataFormat.preference,), "dpo", from_model=True),
    StageType.ppo: StageRule((DataFormat.prompt_only,), "ppo", from_model=True),
    StageType.grpo: StageRule((DataFormat.prompt_only,), "grpo", from_model=True),
    StageType.eval: StageRule(
        (DataFormat.text, DataFormat.prompt_completion, DataFormat.preference),
        "eval",
        from_model=True,
    ),
}
STAGE_FORMATS: dict[StageType, tuple[DataFormat, ...]] = {
    t: r.formats for t, r in STAGE_RULES.items()
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
            ("!has(self.eval) || self.type == 'eval'", "eval is only allowed on eval stages"),
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
    eval: EvalParams | None = Field(None, description="Evaluation settings (type eval).")
    gates: list[Gate] = Field(
        default_factory=list,
        max_length=16,
        description="Checks on the stage's result metrics; one that fails ends the job "
        "(reason GateFailed) before the next stage starts.",
    )


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


def stage_problems(stage: StageSpec) -> list[tuple[str, str]]:
    """(field under the stage, message) for each rule of STAGE_RULES that `stage` breaks.

    The apiserver's CEL rules and the API's validation refuse such a stage in a job; the
    driver checks again at start-up, since a stage config file may come from anywhere.
    """
    rule = STAGE_RULES[StageType(stage.type)]
    out = []
    for block in ("dpo", "ppo", "grpo", "eval"):
        if getattr(stage, block) is not None and block != rule.block:
            out.append((block, f"only allowed when type is {block}"))
    if stage.type == StageType.ppo and stage.ppo is None:
        out.append(("ppo", "required for ppo stages (ppo.rewardModel)"))
    grpo = stage.grpo
    if stage.type == StageType.grpo and (
        grpo is None or (grpo.reward_model is None and not grpo.reward_functions)
    ):
        out.append(("grpo", "needs rewardModel or rewardFunctions"))
    if stage.dataset.format not in rule.formats:
        need = " or ".join(map(str, rule.formats))
        out.append(
            ("dataset.format", f"{stage.type} stages need {need} data, not {stage.dataset.format}")
        )
    return out
