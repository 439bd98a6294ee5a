"""Adapter settings map onto peft as the spec says (no training; a few seconds)."""

from __future__ import annotations

import pytest

from llmtrain.trainer import adapters
from llmtrain.trainer.config import PeftSpec

from .helpers import Assets

pytestmark = pytest.mark.trainer


def linears(model):
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_lora_dora_and_rslora_parameters(assets: Assets) -> None:
    from transformers import AutoModelForCausalLM

    def fresh():
        return AutoModelForCausalLM.from_pretrained(str(assets.model))

    targets = {n: m for n, m in linears(fresh()).items() if n != "lm_head"}
    lora = adapters.apply(fresh(), PeftSpec(method="lora", r=4, alpha=8))
    # "all-linear": every linear layer but the output head, r * (in + out) each
    expected = sum(4 * (m.in_features + m.out_features) for m in targets.values())
    assert adapters.trainable_parameters(lora) == expected
    dora = adapters.apply(fresh(), PeftSpec(method="dora", r=4, alpha=8))
    # DoRA adds one magnitude per output feature of each adapted layer
    magnitudes = sum(m.out_features for m in targets.values())
    assert adapters.trainable_parameters(dora) == expected + magnitudes
    some = adapters.apply(fresh(), PeftSpec(method="lora", r=4, target_modules=["q_proj"]))
    q = [m for n, m in targets.items() if n.endswith("q_proj")]
    assert adapters.trainable_parameters(some) == sum(4 * (m.in_features + m.out_features)
                                                      for m in q)  # fmt: skip
    rs = adapters.lora_config(PeftSpec(method="lora", r=16, alpha=8, use_rslora=True))
    assert rs.use_rslora and rs.lora_alpha == 8 and rs.r == 16
    model = adapters.apply(fresh(), PeftSpec(method="lora", r=16, alpha=8, use_rslora=True))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 16**0.5)  # alpha / sqrt(r)
    assert adapters.lora_config(PeftSpec(method="none")) is None
    full = fresh()
    assert adapters.apply(full, PeftSpec()) is full
