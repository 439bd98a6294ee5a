"""Load tokenizers and models for a stage: local path/PVC, hub id, adapter dir, or from scratch.

    tok = models.load_tokenizer(cfg)
    model = models.load_model(cfg, tok)                  # what the stage trains
    model = models.load_pretrained("runs/x/sft/final")   # a full model or an adapter dir

An adapter directory (`adapter_config.json`) is loaded as its base with the adapter merged in;
the merged model's `name_or_path` is the adapter directory, so a new adapter trained on top of
it records that directory as its base and the chain reloads the same way. Hub access uses
`HF_TOKEN`; `HF_HUB_OFFLINE=1` is honoured by transformers itself.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from llmtrain.trainer.config import DType, MixedPrecision, PeftMethod
from llmtrain.trainer.contract import StageConfig, hub_token

log = logging.getLogger(__name__)


def is_adapter_dir(source: str | None) -> bool:
    return bool(source) and (Path(str(source)) / "adapter_config.json").is_file()


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_dtype(dtype: str) -> Any:
    """The torch dtype for `ModelSpec.dtype`: `auto` is bfloat16 on capable GPUs, else float32."""
    import torch

    if dtype == DType.auto:
        return torch.bfloat16 if bf16_supported() else torch.float32
    return getattr(torch, str(dtype))


def precision_flags(mixed: str) -> dict[str, bool]:
    """TrainingArguments `bf16`/`fp16` for `DistributedSpec.mixed_precision`."""
    if mixed == MixedPrecision.auto:
        return {"bf16": bf16_supported(), "fp16": False}
    return {"bf16": mixed == MixedPrecision.bf16, "fp16": mixed == MixedPrecision.fp16}


def tokenizer_source(cfg: StageConfig) -> str:
    source = cfg.model.tokenizer.source or cfg.input_model or cfg.model.source
    if not source:
        raise ValueError("no tokenizer: set model.tokenizer.source (needed to build from scratch)")
    return tokenizer_dir(source)


def tokenizer_dir(source: str) -> str:
    """`source`, or the base model of an adapter dir that holds no tokenizer."""
    while is_adapter_dir(source) and not (Path(source) / "tokenizer_config.json").is_file():
        source = adapter_base(source)
    return str(source)


def adapter_base(adapter_dir: str) -> str:
    """The base model an adapter dir names. A stage's base is often the previous stage's
    `final/`, written as the pod saw it (`/storage/job/sft/final`); on storage mounted
    elsewhere (the PVC's directory on a laptop) that path is found again next to the
    adapter: the longest tail of it that exists under one of the adapter dir's parents."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir}: adapter_config.json names no base model")
    path = Path(base)
    if not path.is_absolute() or path.exists():
        return str(base)
    here = Path(adapter_dir).resolve()
    for start in range(1, len(path.parts)):
        tail = Path(*path.parts[start:])
        for parent in here.parents:
            if (parent / tail).is_dir():
                return str(parent / tail)
    return str(base)


def load_tokenizer(cfg: StageConfig) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        tokenizer_source(cfg),
        revision=cfg.model.tokenizer.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        token=hub_token(),
    )
    if tok.pad_token is None:  # common for base models; padding is masked out anyway
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(compute_dtype: Any) -> Any:
    """QLoRA: bitsandbytes 4-bit NF4 with double quantisation."""
    import transformers

    config_class: Any = transformers.BitsAndBytesConfig  # untyped in transformers
    return config_class(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# The peft task type of the auto classes a stage may load an adapter directory into.
_TASK_TYPES = {"AutoModelForCausalLM": "CAUSAL_LM", "AutoModelForSequenceClassification": "SEQ_CLS"}


def load_pretrained(
    source: str,
    dtype: Any = None,
    quantize: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    auto_class: str = "AutoModelForCausalLM",
    **kwargs: Any,
) -> Any:
    """A full model from a path or hub id; an adapter dir is applied to its base and merged."""
    import transformers
    from peft import PeftConfig, PeftModel

    cls = getattr(transformers, auto_class)
    if is_adapter_dir(source):
        base_source = adapter_base(source)
        model = load_pretrained(
            base_source, dtype, False, None, trust_remote_code, auto_class, **kwargs
        )
        adapter = PeftConfig.from_pretrained(source)
        if _TASK_TYPES.get(auto_class, adapter.task_type) != adapter.task_type:
            adapter.task_type = None  # e.g. an SFT adapter under a new reward head: merge only
        model = PeftModel.from_pretrained(model, source, config=adapter).merge_and_unload()
        model.requires_grad_(True)  # peft froze the base; a full fine-tune trains all of it
        model.name_or_path = model.config._name_or_path = str(source)
        if quantize:  # bitsandbytes quantises at load time: reload the merged weights
            tmp = tempfile.mkdtemp(prefix="llmtrain-merged-")
            model.save_pretrained(tmp)
            model = load_pretrained(tmp, dtype, True, None, trust_remote_code, auto_class, **kwargs)
            model.name_or_path = model.config._name_or_path = str(source)
        return model
    extra: dict[str, Any] = {}
    if quantize:
        extra["quantization_config"] = quantization_config(dtype)
        extra["device_map"] = {"": _local_device()}
    return cls.from_pretrained(
        source,
        revision=revision,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        token=hub_token(),
        **extra,
        **kwargs,
    )


def _local_device() -> Any:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.current_device()
    return "cpu"


def from_architecture(architecture: dict[str, Any], tokenizer: Any, dtype: Any) -> Any:
    """A randomly initialised causal LM: `AutoConfig.for_model(**architecture)`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(architecture)
    vocab = len(tokenizer)
    if arch.setdefault("vocab_size", vocab) < vocab:
        raise ValueError(f"architecture.vocab_size {arch['vocab_size']} < tokenizer size {vocab}")
    for name in ("bos", "eos", "pad"):
        arch.setdefault(f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    config = AutoConfig.for_model(**arch)
    auto: Any = AutoModelForCausalLM
    return auto.from_config(config, dtype=dtype)


def load_model(cfg: StageConfig, tokenizer: Any, auto_class: str = "AutoModelForCausalLM") -> Any:
    """The model a stage starts from, quantised to 4 bits for QLoRA."""
    dtype = resolve_dtype(cfg.model.dtype)
    if not cfg.input_model:
        if not cfg.model.architecture:
            raise ValueError("no input model: set model.source or model.architecture")
        log.info("building a %s model from scratch", cfg.model.architecture.get("model_type"))
        return from_architecture(cfg.model.architecture, tokenizer, dtype)
    quantize = cfg.stage.peft.method == PeftMethod.qlora
    log.info("loading %s%s", cfg.input_model, " (4-bit NF4)" if quantize else "")
    model = load_pretrained(
        cfg.input_model,
        dtype,
        quantize,
        cfg.model.revision,
        cfg.model.trust_remote_code,
        auto_class,
    )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(
            f"{cfg.input_model}: embedding has {model.get_input_embeddings().num_embeddings} rows, "
            f"tokenizer has {len(tokenizer)} tokens"
        )
    return model
