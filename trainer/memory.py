"""How much memory each GPU needs for a stage: weights, gradients, optimizer state, activations.

    shapes = memory.shapes_of(config)          # a transformers config: counted on the meta device
    est = memory.estimate(shapes, cfg)         # cfg: a StageConfig; est.total in bytes
    print(est.summary())   # "weights 1.0 GiB + gradients 1.0 GiB + optimizer 4.0 GiB + ..."

The preflight compares `est.total` with the GPU's memory before any GPU is held. The terms:

* weights: parameters in the weight dtype (bf16 on GPUs, fp32 on the CPU); QLoRA stores the
  adapted linear layers as 4-bit NF4 with double-quantised scales (0.516 bytes a parameter);
  ZeRO-3 shards them over the workers;
* gradients: one per trainable parameter (LoRA adapters are kept in fp32 by peft); ZeRO-2/3
  shard them;
* optimizer: AdamW's two fp32 moments, plus an fp32 master copy under DeepSpeed with 16-bit
  weights; ZeRO-1+ shards them, offload moves them to the host;
* activations: what autograd keeps for the backward pass, per token of a micro-batch
  (`batchSize` x `maxSeqLength`; twice that for DPO's chosen and rejected): per layer a
  multiple of the hidden and MLP widths (plus the inputs of LoRA's dropout), and a few
  vocabulary-sized fp32 rows for the logits and the loss. Gradient checkpointing keeps
  one layer's worth plus each layer's input.

The per-token multiples were measured (peak RSS around real training steps of tiny Llama
models on the CPU, tests/trainer/test_memory.py) and read as counts of saved tensors; the
test holds the estimate within 25% of the measured peak for full, LoRA and QLoRA training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmtrain.trainer.config import (
    DistributedStrategy,
    DType,
    MixedPrecision,
    PeftMethod,
    StageType,
)
from llmtrain.trainer.contract import StageConfig

GiB = 2**30
# Saved activations per token and layer, in units of the hidden width h and the MLP width f.
# Counting what autograd keeps in a Llama layer (norm inputs and outputs, q/k/v before and
# after rotary and GQA's repeat, attention output, gate/up/activation/product) gives about
# 10h + 4f; peak RSS shows half as much again (the allocator's share), and so do LoRA's
# dropout copies below: the measured multiples are used.
LAYER_H, LAYER_F = 15.0, 6.0
OVERHEAD = 1.5
# fp32 vocabulary rows per token: logits, the loss's log-softmax, and its gradient (measured).
LOGITS = 2.7
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values + 8-bit block scales + their scales


@dataclass(frozen=True)
class Shapes:
    """What the estimate needs from a model's architecture."""

    params: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    # (in, out) of every linear layer except the output head: LoRA's "all-linear" targets.
    linears: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Estimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    params: int
    trainable: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}

    def summary(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations")
        terms = " + ".join(f"{p} {gib(getattr(self, p))}" for p in parts)
        return f"{terms} = {gib(self.total)}"


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def shapes_of(config: Any) -> Shapes:
    """Count a transformers config's parameters on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # untyped in transformers
    with torch.device("meta"):
        model = auto.from_config(config)
    out_head = model.get_output_embeddings()
    linears = tuple(
        (name, m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not out_head
    )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return Shapes(
        params=sum(p.numel() for p in model.parameters()),
        hidden=int(text.hidden_size),
        intermediate=int(getattr(text, "intermediate_size", 4 * text.hidden_size)),
        layers=int(text.num_hidden_layers),
        vocab=int(text.vocab_size),
        linears=linears,
    )


def load_shapes(source: str | None, architecture: dict[str, Any] | None, **kw: Any) -> Shapes:
    """Shapes of a model directory or hub id, or of an `architecture` dict."""
    from transformers import AutoConfig

    if not source:
        if not architecture:
            raise ValueError("set model.source or model.architecture")
        return shapes_of(AutoConfig.for_model(**architecture))
    return shapes_of(AutoConfig.from_pretrained(source, **kw))


def _targeted(shapes: Shapes, targets: list[str] | None) -> list[tuple[str, int, int]]:
    if not targets:
        return list(shapes.linears)
    return [lin for lin in shapes.linears if lin[0].rsplit(".", 1)[-1] in targets]


def estimate(shapes: Shapes, cfg: StageConfig, device: str = "cuda") -> Estimate:
    """Bytes per GPU (or, with device "cpu", per worker process) for the stage `cfg`."""
    st, hp, dist, peft = cfg.stage, cfg.stage.hyperparameters, cfg.distributed, cfg.stage.peft
    gpu = device == "cuda"
    if cfg.model.dtype == DType.auto:
        wbytes = 2 if gpu else 4  # bf16 on GPUs that support it (any a job would ask for)
    else:
        wbytes = 4 if cfg.model.dtype == DType.float32 else 2
    mixed = dist.mixed_precision != MixedPrecision.no and gpu
    abytes = 2 if (wbytes == 2 or mixed) else 4
    world = max(cfg.workers, 1)
    zero = dist.zero_stage if dist.strategy == DistributedStrategy.deepspeed else 0

    adapted = _targeted(shapes, peft.target_modules)
    if peft.method == PeftMethod.none:
        trainable = shapes.params
        weights = shapes.params * wbytes
        tbytes = wbytes
    else:
        trainable = sum(peft.r * (i + o) for _, i, o in adapted)
        if peft.method == PeftMethod.dora:
            trainable += sum(o for _, _, o in adapted)
        quantised = sum(i * o for _, i, o in adapted) if peft.method == PeftMethod.qlora else 0
        weights = int(quantised * NF4_BYTES) + (shapes.params - quantised) * wbytes
        weights += trainable * 4
        tbytes = 4  # peft keeps adapters in fp32 under 16-bit bases
    if zero >= 3:
        weights //= world
    gradients = trainable * tbytes // (world if zero >= 2 else 1)
    master = 4 if (dist.strategy == DistributedStrategy.deepspeed and tbytes == 2) else 0
    optimizer = trainable * (8 + master)
    if zero >= 1:
        optimizer //= world
    if dist.offload and zero >= 1:
        optimizer = 0

    tokens = hp.batch_size * hp.max_seq_length * (2 if st.type == StageType.dpo else 1)
    h, f, n = shapes.hidden, shapes.intermediate, shapes.layers
    layer = (LAYER_H * h + LAYER_F * f) * abytes
    if peft.method != PeftMethod.none and peft.dropout > 0:
        # Each adapted layer keeps its own dropped-out copy of its input, and the mask (a
        # bool mask on GPUs; a float noise tensor on the CPU).
        copies = abytes + 1 if gpu else 2 * abytes
        layer += OVERHEAD * sum(i for _, i, _ in adapted) / max(n, 1) * copies
    per_token = n * layer if not hp.gradient_checkpointing else n * h * abytes + layer
    if st.type != StageType.reward:  # a reward model's head is one logit
        per_token += LOGITS * shapes.vocab * 4
    activations = int(tokens * per_token)
    return Estimate(weights, gradients, optimizer, activations, shapes.params, trainable)
