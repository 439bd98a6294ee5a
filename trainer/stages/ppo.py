"""RLHF with PPO against a reward model (see `ppo_trainer.py` beside it for the algorithm).

    llmtrain worker --stage-config stage.json     # stage.type: ppo, dataset.format: prompt-only

The policy is the input model (with the stage's LoRA/QLoRA adapter, if any). The reward model
is `ppo.rewardModel`: a reward stage's final/ or a path (resolved into StageConfig.reward_model).
The reference is the policy with its adapter disabled, or, for full fine-tuning, a frozen copy
of the input model. One rollout takes `batchSize` prompts, samples `responseLength` tokens at
`temperature`, and is followed by `ppoEpochs` passes of `miniBatchSize` updates (each one
optimizer step, so `maxSteps` counts updates). Logs reward mean/std, KL, and cumulative
generation and update seconds.

TRL 1.x has no PPO trainer any more (`trl.experimental.ppo` is gone from the pinned TRL), so
this is a small PPO on `transformers.Trainer`; it runs under the same engine as every stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtrain.trainer import data
from llmtrain.trainer.checkpoint import save_final
from llmtrain.trainer.config import PeftMethod
from llmtrain.trainer.contract import StageConfig
from llmtrain.trainer.stages import common

if TYPE_CHECKING:  # the driver imports stages for prepare_data; keep it light
    from llmtrain.trainer.stages import StageContext

PEFT_TASK_TYPE = "CAUSAL_LM"
APPLY_PEFT = True  # the value head sits on the adapted policy: one trainable model
load_model = common.load_causal_lm


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    return common.prompt_data(cfg, tokenizer, render_chat=True)


def build(ctx: StageContext) -> Any:
    from transformers import TrainingArguments

    from llmtrain.trainer.stages.ppo_trainer import PPOSettings, PPOTrainer

    cfg = ctx.cfg
    params, hp = cfg.stage.ppo, cfg.stage.hyperparameters
    assert params is not None  # config.stage_problems: ppo stages have their block
    reward_model = common.load_reward_model(cfg.reward_model, cfg, ctx.tokenizer, frozen=True)
    ref = None
    if cfg.stage.peft.method == PeftMethod.none:
        ref = common.load_reference(cfg)
    settings = PPOSettings(
        kl_coef=params.kl_coef,
        response_length=params.response_length,
        temperature=params.temperature,
        mini_batch_size=params.mini_batch_size,
        ppo_epochs=params.ppo_epochs,
        max_prompt_length=max(1, hp.max_seq_length - params.response_length),
    )
    kwargs = dict(ctx.training_kwargs, eval_strategy="no")
    return PPOTrainer(
        policy=ctx.model,
        ref_policy=ref,
        reward_model=reward_model,
        settings=settings,
        args=TrainingArguments(**kwargs),
        train_dataset=ctx.train_dataset,
        processing_class=ctx.tokenizer,
    )


def save(ctx: StageContext, trainer: Any) -> dict[str, Any]:
    trainer.save_value_head = False  # final/ is the policy alone, loadable by later stages
    return save_final(ctx, trainer)
