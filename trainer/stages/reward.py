"""Reward modelling: a sequence classifier that scores chosen above rejected (Bradley-Terry).

    llmtrain worker --stage-config stage.json     # stage.type: reward, dataset.format: preference

TRL's `RewardTrainer` on {prompt?, chosen, rejected} (strings or chat messages): the loss is
-log sigmoid(r(chosen) - r(rejected)). The model is the input model with a fresh one-logit
`score` head (AutoModelForSequenceClassification, num_labels=1); with LoRA the head is trained
in full next to the adapter (peft's SEQ_CLS task). `final/` is what ppo and grpo stages load
as their reward model. Logs `accuracy` and `margin` (-> llmtrain_preference_accuracy/_margin)
and `mean_reward` (-> llmtrain_reward_mean).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtrain.trainer import data
from llmtrain.trainer.checkpoint import save_final
from llmtrain.trainer.contract import StageConfig
from llmtrain.trainer.stages import common

if TYPE_CHECKING:  # the driver imports stages for prepare_data; keep it light
    from llmtrain.trainer.stages import StageContext

PEFT_TASK_TYPE = "SEQ_CLS"  # the adapter leaves the new score head fully trainable
APPLY_PEFT = True
save = save_final


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    return common.preference_data(cfg)


def load_model(ctx: StageContext) -> Any:
    cfg = ctx.cfg
    return common.load_reward_model(
        cfg.input_model, cfg, ctx.tokenizer, revision=cfg.model.revision
    )


def build(ctx: StageContext) -> Any:
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        **ctx.training_kwargs, max_length=ctx.cfg.stage.hyperparameters.max_seq_length
    )
    return RewardTrainer(
        model=ctx.model,
        args=args,
        train_dataset=ctx.train_dataset,
        eval_dataset=ctx.eval_dataset,
        processing_class=ctx.tokenizer,
    )
