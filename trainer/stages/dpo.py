"""Direct preference optimisation (Rafailov et al. 2023) with TRL's `DPOTrainer`.

    llmtrain worker --stage-config stage.json     # stage.type: dpo, dataset.format: preference

`dpo.beta`, `dpo.lossType` (sigmoid, ipo, hinge, robust) and `dpo.precomputeRefLogProbs` map
to DPOConfig. The reference policy is the stage's input model: with LoRA/QLoRA it is the same
base with the adapter disabled (the adapter is created by TRL from `peft_config`, so no second
copy exists); with full fine-tuning a frozen copy is loaded from the input model, or none at all
when reference log-probs are precomputed (TRL computes them with the untouched policy before
training). At the first step policy == reference, so the sigmoid loss is ln 2.

Logs `rewards/margins` and `rewards/accuracies` (-> llmtrain_preference_margin/_accuracy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmtrain.trainer import adapters, data
from llmtrain.trainer.checkpoint import save_final
from llmtrain.trainer.config import DPOParams, PeftMethod
from llmtrain.trainer.contract import StageConfig
from llmtrain.trainer.stages import common

if TYPE_CHECKING:  # the driver imports stages for prepare_data; keep it light
    from llmtrain.trainer.stages import StageContext

PEFT_TASK_TYPE = "CAUSAL_LM"
APPLY_PEFT = False  # TRL wraps the model itself, so its reference is "adapter disabled"
load_model = common.load_causal_lm
save = save_final


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any, data.Report]:
    return common.preference_data(cfg)


def build(ctx: StageContext) -> Any:
    from trl import DPOConfig, DPOTrainer

    cfg = ctx.cfg
    params = cfg.stage.dpo or DPOParams()
    args = DPOConfig(
        **ctx.training_kwargs,
        beta=params.beta,
        loss_type=[str(params.loss_type)],
        precompute_ref_log_probs=params.precompute_ref_log_probs,
        max_length=cfg.stage.hyperparameters.max_seq_length,
    )
    ref_model = None
    full = cfg.stage.peft.method == PeftMethod.none
    if full and not params.precompute_ref_log_probs:
        # Loaded from the input model, not copied from the policy: under ZeRO-3 the policy is
        # already partitioned, and on resume it is the input model that is the reference.
        ref_model = common.load_reference(cfg)
    hp = cfg.stage.hyperparameters
    return DPOTrainer(
        model=adapters.prepare_kbit(ctx.model, cfg.stage.peft, hp.gradient_checkpointing),
        ref_model=ref_model,
        args=args,
        train_dataset=ctx.train_dataset,
        eval_dataset=ctx.eval_dataset,
        processing_class=ctx.tokenizer,
        peft_config=ctx.peft_config,
    )
