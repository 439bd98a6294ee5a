"""Supervised fine-tuning: LoRA on chats with two Ray workers under ZeRO-2 (plus a merged model
that generates), full fine-tuning with packing under ZeRO-3, QLoRA on a 4-bit base, and early
stopping with the overfitting warning.

The Ray runs start from the session's pretrained model (`pretrained`); QLoRA and early
stopping run the same worker loop in this process (no Ray), because they check live objects.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from llmtrain.trainer import checkpoint, engine, metrics

from .helpers import Assets, Run, losses, read_history, run_in_process, stage_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def lora_parameter_count(model_dir: Path, r: int) -> int:
    """sum r * (in + out) over the linear layers "all-linear" targets (all but the head)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_lora_on_chats_with_two_workers_zero2_merges_and_generates(
    assets: Assets, pretrained: Run, tmp_path: Path
) -> None:
    base = pretrained.out / "final"
    out = tmp_path / "sft-lora"
    cfg = stage_config(
        assets, out, "sft", {"source": str(assets.chats), "format": "messages"},
        input_model=str(base),
        hyperparameters={"maxSteps": 30, "maxSeqLength": 128, "learningRate": 5e-3},
        peft={"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "merge": True},
        workers=2, distributed={"strategy": "deepspeed", "zeroStage": 2},
    )  # fmt: skip
    result = engine.run(cfg)

    assert result["trainable_parameters"] == lora_parameter_count(base, r=8)
    train = losses(read_history(out))
    assert train[-1] < train[0] * 0.8, train
    final = out / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["base_model_name_or_path"] == str(base)
    assert not (final / "model.safetensors").exists()  # an adapter, not a full model
    # DeepSpeed wrote its engine state into the (complete) checkpoints
    newest = checkpoint.latest(out / "checkpoints")
    assert newest is not None and any(newest.glob("global_step*"))
    # merged/ is a plain model that from_pretrained loads, different from the base
    merged = weights(out / "merged")
    assert set(merged) == set(weights(base))
    changed = [k for k in merged if "proj" in k and not merged[k].equal(weights(base)[k])]
    assert changed
    # A later stage may start from final/ itself: the adapter is applied to its base and merged.
    from llmtrain.trainer import models

    loaded = models.load_pretrained(str(final)).state_dict()
    assert all(loaded[k].allclose(merged[k], atol=1e-6) for k in merged)
    assert models.tokenizer_dir(str(final)) == str(final)  # final/ carries the tokenizer
    prompt = "<|bos|><|system|>you are a helpful bot.\n<|user|>say hello to ann.\n<|assistant|>"
    cli = Path(sys.executable).parent / "llmtrain"
    done = subprocess.run(
        [str(cli), "generate", "--model", str(out / "merged"), "--max-new-tokens", "12", prompt],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_full_sft_packed_with_two_workers_zero3(
    assets: Assets, pretrained: Run, tmp_path: Path
) -> None:
    base = pretrained.out / "final"
    out = tmp_path / "sft-full"
    cfg = stage_config(
        assets, out, "sft", {"source": str(assets.instructions), "format": "prompt-completion"},
        input_model=str(base),
        hyperparameters={"maxSteps": 20, "maxSeqLength": 128, "packing": True,
                         "learningRate": 1e-3, "batchSize": 4},
        workers=2, distributed={"strategy": "deepspeed", "zeroStage": 3},
    )  # fmt: skip
    result = engine.run(cfg)

    train = losses(read_history(out))
    assert train[-1] < train[0] * 0.8, train
    assert result["trainable_parameters"] == sum(v.numel() for v in weights(base).values())
    final = weights(out / "final")  # ZeRO-3 gathered the full weights for final/
    before = weights(base)
    assert set(final) == set(before)
    assert all(final[k].shape == before[k].shape for k in final)
    assert any(not final[k].equal(before[k]) for k in final)


def test_qlora_trains_adapters_on_a_4bit_base(assets: Assets, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    out = tmp_path / "sft-qlora"
    cfg = stage_config(
        assets, out, "sft", {"source": str(assets.instructions), "format": "prompt-completion"},
        input_model=str(assets.model),
        hyperparameters={"maxSteps": 16, "learningRate": 1e-2, "loggingSteps": 4},
        peft={"method": "qlora", "r": 4, "alpha": 8, "dropout": 0.0},
    )  # fmt: skip
    trainer, records = run_in_process(cfg)

    model = trainer.model
    layers = {n: m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    assert layers and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in layers.values())
    quant = model.base_model.model.config.quantization_config
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    end = next(r for r in records if r["kind"] == "end")
    assert end["quantized_modules"] == 14  # 7 projections x 2 layers
    assert end["trainable_parameters"] == lora_parameter_count(assets.model, r=4)
    train = losses(trainer.state.log_history)
    assert train[-1] < train[0], train
    assert (out / "final" / "adapter_config.json").is_file()


def test_early_stopping_and_the_overfitting_warning(
    assets: Assets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 8 training samples, many epochs: the train loss keeps falling while the held-out loss
    # turns up, which stops training after `patience` evaluations without improvement.
    out = tmp_path / "sft-overfit"
    cfg = stage_config(
        assets, out, "sft",
        {"source": str(assets.instructions), "format": "prompt-completion",
         "evalFraction": 0.2, "maxSamples": 8},
        input_model=str(assets.model),
        hyperparameters={"maxSteps": 200, "learningRate": 1e-2, "batchSize": 8,
                         "loggingSteps": 2, "evalSteps": 4, "earlyStoppingPatience": 2},
    )  # fmt: skip
    trainer, records = run_in_process(cfg)

    end = next(r for r in records if r["kind"] == "end")
    assert end["stopped_early"] and end["steps"] < 200
    monitor = metrics.Monitor(cfg, out, queue=None)
    with caplog.at_level(logging.WARNING, logger="llmtrain.trainer.metrics"):
        for record in records:
            monitor.apply(dict(record))
    assert "possible overfitting" in caplog.text
    history = monitor.history
    assert metrics.is_overfitting(history) == monitor.overfitting
