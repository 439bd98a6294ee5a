"""Group relative policy optimisation (Shao et al. 2024) with TRL's `GRPOTrainer`.

    llmtrain worker --stage-config stage.json     # stage.type: grpo, dataset.format: prompt-only

Each prompt gets `grpo.numGenerations` samples; a sample's advantage is its reward minus its
group's mean (over the group's std). Rewards, summed: the reward model of `grpo.rewardModel`
(a reward stage's final/ or a path) and the rule rewards named in `grpo.rewardFunctions`
(`exact-match` against the `answer` column, `format` = `grpo.formatRegex`, `length-penalty`
beyond `grpo.targetLength` tokens; see stages/rewards.py). `grpo.beta` > 0 adds a KL
penalty against the reference: the input model, or with LoRA the adapter-disabled base.

`batchSize` counts completions, so it must be a multiple of `numGenerations`. Logs `reward`,
`reward_std`, `kl` (when beta > 0) and cumulative generation and update seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtrain.trainer import adapters, data
from llmtrain.trainer.checkpoint import save_final
from llmtrain.trainer.config import GRPOParams
from llmtrain.trainer.contract import StageConfig
from llmtrain.trainer.stages import common, rewards

if TYPE_CHECKING:  # the driver imports stages for prepare_data; keep it light
    from llmtrain.trainer.stages import StageContext

PEFT_TASK_TYPE = "CAUSAL_LM"
APPLY_PEFT = False  # TRL wraps the model itself, so its reference is "adapter disabled"
load_model = common.load_causal_lm
save = save_final


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    return common.prompt_data(cfg, tokenizer, render_chat=False)


def reward_functions(ctx: StageContext, params: GRPOParams) -> tuple[list[Any], list[Any]]:
    """(reward functions, their processing classes) for GRPOTrainer: the rule rewards, then
    the reward model (config.stage_problems made sure there is at least one)."""
    funcs: list[Any] = rewards.build(
        params.reward_functions,
        format_regex=params.format_regex,
        target_length=params.target_length,
    )
    classes: list[Any] = [None] * len(funcs)
    if ctx.cfg.reward_model:
        rm = common.load_reward_model(ctx.cfg.reward_model, ctx.cfg, ctx.tokenizer, frozen=True)
        funcs.append(rm)
        classes.append(ctx.tokenizer)
    return funcs, classes


def build(ctx: StageContext) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    cfg = ctx.cfg
    params, hp = cfg.stage.grpo or GRPOParams(), cfg.stage.hyperparameters
    per_step = hp.batch_size * hp.gradient_accumulation_steps * ctx.world_size
    if per_step % params.num_generations:
        raise ValueError(
            f"stage {cfg.stage.name}: batchSize x gradientAccumulationSteps x workers ({per_step}) "
            f"must be a multiple of grpo.numGenerations ({params.num_generations})"
        )
    funcs, classes = reward_functions(ctx, params)
    args = GRPOConfig(
        **dict(ctx.training_kwargs, eval_strategy="no"),
        num_generations=params.num_generations,
        beta=params.beta,
        max_completion_length=params.max_completion_length,
        temperature=params.temperature,
    )

    class TimedGRPOTrainer(common.GenerationTimer, GRPOTrainer):
        """Adds cumulative generation (sampling + scoring) and update seconds to the logs."""

        def _generate_and_score_completions(self, *a: Any, **kw: Any) -> Any:
            with self.generating():
                return super()._generate_and_score_completions(*a, **kw)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(self.timing())
            super().log(logs, start_time)

    return TimedGRPOTrainer(
        model=adapters.prepare_kbit(ctx.model, cfg.stage.peft, hp.gradient_checkpointing),
        reward_funcs=funcs,
        reward_processing_classes=classes,
        args=args,
        train_dataset=ctx.train_dataset,
        processing_class=ctx.tokenizer,
        peft_config=ctx.peft_config,
    )
