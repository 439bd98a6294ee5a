"""The memory estimator (trainer/memory.py) against measured peaks of real training steps.

    pytest tests/trainer/test_memory.py -x -q -s      # -s prints estimate vs measured

How the peak is measured: each mode runs in a fresh Python process (this file as a script).
It first trains a very small model one step in the same mode, so that every lazily loaded
kernel and library is resident; then it notes its resident set (VmRSS), loads the measured
model through the trainer's own code (models.load_pretrained, 4-bit for QLoRA, then
adapters.apply), resets the kernel's high-water mark (`5` to /proc/self/clear_refs) and runs
three optimizer steps as the HF Trainer does (forward with labels, backward, clipping, AdamW,
zero_grad). The peak is VmHWM minus the VmRSS noted before loading: weights, gradients,
optimizer state and activations of this model, on the CPU allocator (glibc's mmap threshold
fixed, so that freed blocks do not linger in the heap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ARCH: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 16000,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
SMALL = {**ARCH, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "vocab_size": 500}  # fmt: skip
BATCH, SEQ = 2, 256
PEFT = {"full": {"method": "none"}, "lora": {"method": "lora", "r": 8, "alpha": 16},
        "qlora": {"method": "qlora", "r": 8, "alpha": 16}}  # fmt: skip


def _stage(mode: str, out: str) -> Any:
    from llmtrain.trainer.contract import StageConfig

    return StageConfig.model_validate(
        {
            "job": "mem",
            "stage": {
                "name": "sft",
                "type": "sft",
                "dataset": {"source": "/dev/null", "format": "text"},
                "peft": PEFT[mode],
                "hyperparameters": {"batchSize": BATCH, "maxSeqLength": SEQ},
            },
            "model": {"architecture": ARCH, "dtype": "float32"},
            "output_dir": out,
        }
    )


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_estimate_is_within_25_percent_of_the_measured_peak(mode: str, tmp_path: Path) -> None:
    from llmtrain.trainer import memory

    # glibc raises its mmap threshold as large blocks are freed, so how much of the peak is
    # heap left over from before varied from run to run (ratio 0.74-1.01 for full). Fixed,
    # every large block comes from mmap and goes back when freed: VmHWM is the live peak,
    # the same in every run.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, __file__, mode, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    est = memory.estimate(memory.load_shapes(None, ARCH), _stage(mode, str(tmp_path)), "cpu")
    assert est.trainable == measured["trainable"]
    ratio = est.total / measured["peak"]
    print(
        f"{mode}: estimated {est.summary()}; measured {memory.gib(measured['peak'])}: {ratio:.2f}"
    )
    assert 0.75 <= ratio <= 1.25, (est.as_dict(), measured)


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def _measure(mode: str, tmp: Path) -> dict[str, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmtrain.trainer import adapters, models

    torch.manual_seed(0)
    spec = _stage(mode, str(tmp)).stage.peft

    def load(arch: dict[str, Any], name: str) -> Any:
        path = tmp / name
        if not path.exists():
            AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch)).save_pretrained(path)
        model = models.load_pretrained(str(path), torch.float32, quantize=mode == "qlora")
        return adapters.apply(model, spec)

    def train(model: Any, batch: int, seq: int, steps: int) -> None:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        for _ in range(steps):
            ids = torch.randint(0, model.config.vocab_size, (batch, seq))
            model(input_ids=ids, labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    train(load(SMALL, "small"), 2, 16, 2)  # warm-up: kernels and libraries resident
    load(ARCH, "big")  # written to disk before the baseline; this copy is dropped
    import gc

    gc.collect()
    base = _rss("VmRSS")
    model = load(ARCH, "big")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: loading's own transient peak is not training's
    train(model, BATCH, SEQ, 3)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"peak": _rss("VmHWM") - base, "trainable": trainable}


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], Path(sys.argv[2]))))
