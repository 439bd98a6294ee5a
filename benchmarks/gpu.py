"""GPU benchmark: pretraining MFU, LoRA SFT against TRL, and QLoRA's memory, on one GPU.

    python -m benchmarks gpu                       # one H100/H200, sized for < 10 minutes
    python -m benchmarks.gpu --smoke               # CPU, tiny shapes, a few steps (CI)
    python -m benchmarks.gpu --out gpu.json        # also the figures as JSON

Everything is built from configs, nothing comes from a hub: a byte-level BPE tokenizer trained
on generated text (llmtrain.trainer.tiny) and Llama-shaped models with random weights.

1. pretrain MFU: our `pretrain` stage on a ~1.2B Llama (Llama-3.2-1B's shape: hidden 2048,
   16 layers, 32 heads, 8 KV heads, MLP 8192, vocab 128256, tied embeddings) in bf16 (weights),
   sequences of 2048. FLOPs = 6·N·tokens + attention 12·L·S·d per token (forward+backward, the
   full S×S score matrix, as in PaLM's MFU), N = all parameters (the tied embedding is also
   the LM head's matmul; an untied input embedding would not count). MFU = achieved FLOP/s /
   the GPU's dense bf16 peak, from its name (PEAK_BF16, printed; unknown names give no MFU).
2. LoRA SFT tokens/s: our `sft` stage (LoRA r 16 on all linear layers, packing) against TRL's
   SFTTrainer with the same LoRA, packing, bf16 and no gradient checkpointing, on the same
   ~1.2B model and prompt/completion rows; ratio printed.
3. Peak GPU memory of QLoRA (4-bit NF4 base) against LoRA (bf16 base), same SFT run.

Our stages run in this process (loop.train_worker, as tests/trainer's run_in_process does):
the same stage modules, loop and Trainer as under Ray Train, without its start-up, so peak
memory is this process's (torch.cuda.max_memory_allocated). tokens/s = non-padding tokens /
train_runtime from the HF Trainer's counters. The figures are the last lines.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM / NVL
    "GH200": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.0e12,
    "L4": 121.0e12,
    "A10G": 70.0e12,
}
LLAMA_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
TINY = {**LLAMA_1B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}  # fmt: skip


def peak_flops(name: str) -> float | None:
    for key, peak in PEAK_BF16.items():  # ordered: "H100 PCIe" before "H100"
        if key in name:
            return peak
    return None


def count_flops(arch: dict[str, Any], params: int, tokens: int, seq: int) -> float:
    """6·N·tokens + attention 12·L·S·d per token (PaLM's MFU: QK^T and AV, forward and
    backward, the full S×S matrix). N excludes an untied input embedding (a lookup); tied, the
    one matrix is also the LM head's matmul and counts."""
    n = params
    if not arch.get("tie_word_embeddings"):
        n -= arch["vocab_size"] * arch["hidden_size"]
    attention = 12 * arch["num_hidden_layers"] * seq * arch["hidden_size"]
    return float((6 * n + attention) * tokens)


def write_text(path: Path, sentences: int, seed: int = 0) -> Path:
    from llmtrain.trainer import tiny

    rng = random.Random(seed)
    path.write_text("\n".join(tiny.sentence(rng) for _ in range(sentences)) + "\n")
    return path


def _stage(work: Path, name: str, stage: dict[str, Any], arch: dict[str, Any] | None,
           input_model: str | None, gpu: bool) -> Any:  # fmt: skip
    from llmtrain.trainer.contract import StageConfig

    return StageConfig.model_validate(
        {
            "job": "gpu-bench",
            "stage": {"name": name, **stage},
            "model": {
                "tokenizer": {"source": str(work / "tokenizer")},
                "architecture": arch,
                "dtype": "bfloat16" if gpu else "float32",
            },
            "input_model": input_model,
            "output_dir": str(work / name),
            "checkpointing": {"everySteps": 100000},
        }
    )


def run_ours(cfg: Any) -> dict[str, Any]:
    """Our stage in this process (the Ray worker's loop); its figures and peak GPU memory."""
    import torch

    from llmtrain.trainer import loop, prepared, stages

    prepared.prepare(cfg, stages.load(cfg.stage.type), Path(cfg.output_dir))
    _reset()
    trainer = loop.train_worker(
        {"cfg": cfg.model_dump_json(), "queue": _Drop(), "in_process": True}
    )
    figures = _figures(trainer, trainer.state.log_history[-1])
    figures["peak_bytes"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    figures["params"] = sum(p.numel() for p in trainer.model.parameters())
    del trainer
    _reset()
    return figures


def run_trl(model_dir: Path, data: Path, out: Path, gpu: bool, steps: int, batch: int,
            seq: int) -> dict[str, Any]:  # fmt: skip
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    dtype = torch.bfloat16 if gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=2e-4, lr_scheduler_type="constant", logging_steps=max(1, steps // 4),
        save_strategy="no", report_to=[], disable_tqdm=True, seed=42, max_length=seq,
        include_num_input_tokens_seen="non_padding", packing=True, bf16=gpu,
        gradient_checkpointing=False, use_cpu=not gpu,
    )  # fmt: skip
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    _reset()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=lora)  # fmt: skip
    output = trainer.train()
    figures = _figures(trainer, output.metrics)
    figures["peak_bytes"] = torch.cuda.max_memory_allocated() if gpu else None
    del trainer, model
    _reset()
    return figures


class _Drop:
    def put_nowait(self, item: dict[str, Any]) -> None:
        pass


def _figures(trainer: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    seconds = metrics.get("train_runtime") or float("nan")
    tokens = trainer.state.num_input_tokens_seen
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "steps": trainer.state.global_step}  # fmt: skip


def _reset() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures as JSON.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from benchmarks.sft_throughput import write_data
    from llmtrain.trainer import tiny

    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke:
        raise SystemExit("no GPU: run with --smoke for the CPU check")
    device = torch.cuda.get_device_name() if gpu else "cpu"
    arch = LLAMA_1B if gpu else TINY
    seq, batch = (2048, 8) if gpu else (64, 2)
    pre_steps, sft_steps, sft_batch, sft_len = (40, 40, 16, 512) if gpu else (2, 2, 2, 64)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="llmtrain-gpu-bench-"))
    tiny.build_tokenizer(work / "tokenizer", tiny.write_corpus(work / "corpus.txt"))
    tokens_needed = pre_steps * batch * seq
    corpus = write_text(work / "pretrain.txt", tokens_needed // 8 + 200)  # ~10 tokens each
    print(f"device: {device}; model: {json.dumps(arch)}", flush=True)

    # 1. Pretraining MFU: our stage builds the model from the architecture.
    pre = run_ours(_stage(work, "pretrain", {
        "type": "pretrain",
        "dataset": {"source": str(corpus), "format": "text", "evalFraction": 0},
        "hyperparameters": {"maxSteps": pre_steps, "batchSize": batch, "maxSeqLength": seq,
                            "learningRate": 3e-4, "loggingSteps": max(1, pre_steps // 4)},
    }, arch, None, gpu))  # fmt: skip
    flops = count_flops(arch, pre["params"], pre["tokens"], seq) / pre["seconds"]
    peak = peak_flops(device) if gpu else None
    pre.update(flops_per_second=flops, peak_flops=peak, mfu=flops / peak if peak else None)
    model_dir = work / "pretrain" / "final"  # the base of the SFT runs

    # 2. LoRA SFT, ours against TRL; 3. QLoRA against LoRA peak memory.
    data = write_data(work / "sft.jsonl", sft_steps * sft_batch * 4)
    sft: dict[str, Any] = {}
    for method in ("lora", "qlora"):
        sft[f"ours-{method}"] = run_ours(_stage(work, f"sft-{method}", {
            "type": "sft",
            "dataset": {"source": str(data), "format": "prompt-completion", "evalFraction": 0},
            "peft": {"method": method, "r": 16, "alpha": 32, "dropout": 0.0},
            "hyperparameters": {"maxSteps": sft_steps, "batchSize": sft_batch,
                                "maxSeqLength": sft_len, "learningRate": 2e-4, "packing": True,
                                "loggingSteps": max(1, sft_steps // 4)},
        }, None, str(model_dir), gpu))  # fmt: skip
    sft["trl-lora"] = run_trl(model_dir, data, work / "trl", gpu, sft_steps, sft_batch, sft_len)
    lora, qlora, trl = sft["ours-lora"], sft["ours-qlora"], sft["trl-lora"]

    def gib(b: int | None) -> str:
        return f"{b / 2**30:.2f} GiB" if b else "n/a (CPU)"

    summary = {"device": device, "smoke": args.smoke, "pretrain": pre, "sft": sft,
               "seconds": time.time() - started}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\npretrain: {pre['params'] / 1e6:.1f}M parameters, {pre['tokens']} tokens in "
          f"{pre['seconds']:.1f} s, {pre['tokens_per_second']:.0f} tokens/s")  # fmt: skip
    print(f"pretrain achieved: {flops / 1e12:.2f} TFLOP/s (6·N·tokens + attention)")
    print(f"pretrain peak: {peak / 1e12:.1f} TFLOP/s (dense bf16, {device})" if peak else
          f"pretrain peak: unknown for {device!r}: no MFU")  # fmt: skip
    print(f"pretrain MFU: {pre['mfu']:.1%}" if pre["mfu"] is not None else "pretrain MFU: n/a")
    ours_rate, trl_rate = lora["tokens_per_second"], trl["tokens_per_second"]
    print(f"LoRA SFT tokens/s: ours {ours_rate:.0f}, TRL SFTTrainer {trl_rate:.0f}: "
          f"{ours_rate / trl_rate:.2f}x")  # fmt: skip
    print(f"peak GPU memory: QLoRA {gib(qlora['peak_bytes'])}, LoRA {gib(lora['peak_bytes'])}"
          f", TRL LoRA {gib(trl['peak_bytes'])}")  # fmt: skip
    print(f"total: {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
