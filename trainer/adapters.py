"""LoRA, DoRA and QLoRA adapters from `PeftSpec`, and merging an adapter into its base.

    lora = adapters.lora_config(cfg.stage.peft)            # None for full fine-tuning
    model = adapters.apply(model, cfg.stage.peft)          # PeftModel (or the model unchanged)
    model = adapters.prepare_kbit(model, cfg.stage.peft)   # QLoRA's base only, for TRL to wrap
    adapters.merge(adapter_dir, out_dir, dtype)            # full model that from_pretrained loads

QLoRA = LoRA on a 4-bit NF4 base (see models.quantization_config); the base is prepared with
peft's `prepare_model_for_kbit_training` (norms in fp32, input grads on). Target modules default
to every linear layer except the output head ("all-linear").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmtrain.trainer.config import PeftMethod, PeftSpec

log = logging.getLogger(__name__)


def lora_config(spec: PeftSpec, task_type: str = "CAUSAL_LM") -> Any:
    """The peft LoraConfig for the spec, or None for full fine-tuning."""
    if spec.method == PeftMethod.none:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules or "all-linear",
        use_rslora=spec.use_rslora,
        use_dora=spec.method == PeftMethod.dora,
        task_type=task_type,
    )


def apply(
    model: Any, spec: PeftSpec, task_type: str = "CAUSAL_LM", gradient_checkpointing: bool = False
) -> Any:
    """Wrap `model` in a PeftModel per `spec`; full fine-tuning returns it unchanged."""
    config = lora_config(spec, task_type)
    if config is None:
        return model
    import peft

    model = peft.get_peft_model(prepare_kbit(model, spec, gradient_checkpointing), config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("%s: %d trainable of %d parameters", spec.method, trainable, total)
    return model


def prepare_kbit(model: Any, spec: PeftSpec, gradient_checkpointing: bool = False) -> Any:
    """QLoRA's base preparation (other methods: `model` unchanged). `apply` does it; stages
    that hand their LoraConfig to a TRL trainer (APPLY_PEFT = False) call it themselves."""
    if spec.method != PeftMethod.qlora:
        return model
    from peft import prepare_model_for_kbit_training

    prepare: Any = prepare_model_for_kbit_training  # untyped in peft
    return prepare(model, use_gradient_checkpointing=gradient_checkpointing)


def trainable_parameters(model: Any) -> int:
    """Trainable parameter count (ZeRO-3 partitions keep the full size in `ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def quantized_modules(model: Any) -> int:
    """How many bitsandbytes 4-bit linear layers the model has (QLoRA's frozen base)."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is part of the train extra
        return 0
    linear4bit: Any = getattr(bnb.nn, "Linear4bit")  # noqa: B009 - not re-exported for mypy
    return sum(isinstance(m, linear4bit) for m in model.modules())


def merge(
    adapter_dir: str | Path, out: str | Path, dtype: Any = None, tokenizer: Any = None
) -> Path:
    """Load the adapter's base in full precision, merge the adapter, save a plain HF model.

    A QLoRA adapter is merged into the unquantised base: the usual practice, as merging into
    4-bit weights would round the update away.
    """
    from llmtrain.trainer.models import load_pretrained

    model = load_pretrained(str(adapter_dir), dtype=dtype)
    out = Path(out)
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
