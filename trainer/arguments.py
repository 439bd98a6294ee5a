"""The stage config as `TrainingArguments` keywords: where every hyperparameter lands.

    kwargs = arguments.training_kwargs(cfg, has_eval=True)
    args = TrainingArguments(**kwargs)        # or a TRL config: DPOConfig(**kwargs, beta=...)

The one mapping from `hyperparameters`, `checkpointing` and `distributed` to the HF Trainer,
so `learningRate` (say) means the same in every stage: a stage passes the keywords on whole,
overriding only what its algorithm needs (ppo and grpo evaluate by reward, not eval loss).
DeepSpeed ZeRO 0-3 (with optional CPU offload) when the stage asks for it, DDP otherwise;
bf16 on GPUs that support it, fp32 on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtrain.trainer import models
from llmtrain.trainer.config import DistributedStrategy
from llmtrain.trainer.contract import CHECKPOINTS, StageConfig


def deepspeed_config(cfg: StageConfig) -> dict[str, Any] | None:
    """A DeepSpeed config for `distributed.strategy: deepspeed`, else None (DDP)."""
    dist = cfg.distributed
    if dist.strategy != DistributedStrategy.deepspeed:
        return None
    zero: dict[str, Any] = {"stage": dist.zero_stage}
    if dist.offload and dist.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if dist.offload and dist.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if dist.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # final/ is a plain HF model
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        # The HF Trainer's torch AdamW is the client optimizer: no JIT-built CPU Adam needed.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def training_kwargs(cfg: StageConfig, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments keywords for the stage (a stage may override any of them)."""
    hp = cfg.stage.hyperparameters
    kw: dict[str, Any] = {
        "output_dir": str(Path(cfg.output_dir) / CHECKPOINTS),
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "learning_rate": hp.learning_rate,
        "num_train_epochs": hp.epochs,
        "max_steps": hp.max_steps or -1,
        "lr_scheduler_type": str(hp.scheduler),
        "warmup_steps": hp.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        "weight_decay": hp.weight_decay,
        "max_grad_norm": hp.max_grad_norm,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "logging_steps": hp.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": cfg.checkpointing.every_steps,
        "eval_strategy": ("steps" if hp.eval_steps else "epoch") if has_eval else "no",
        "eval_steps": hp.eval_steps,
        "activation_checkpointing": hp.gradient_checkpointing,  # the transformers 5 name
        "include_num_input_tokens_seen": "non_padding",
        "remove_unused_columns": False,  # the collators read `length` / `position_ids`
        "report_to": [],
        "disable_tqdm": True,  # Ray forwards worker output line by line: print logs instead
        "dataloader_pin_memory": models.cuda_available(),
        # Without it accelerate sees one process on CPUs under DeepSpeed (world_size 1).
        "use_cpu": not models.cuda_available(),
        "deepspeed": deepspeed_config(cfg),
        **models.precision_flags(cfg.distributed.mixed_precision),
    }
    if hp.early_stopping_patience and has_eval:
        kw.update(metric_for_best_model="eval_loss", greater_is_better=False)
    return kw
