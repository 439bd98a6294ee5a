"""SFT throughput: our `sft` stage against TRL's `SFTTrainer` and a plain HF `Trainer`.

    python -m benchmarks sft [--samples 1500] [--repeats 2] [--out results.json]
    python -m benchmarks.sft_throughput --samples 1500 --repeats 1

One epoch over the same prompt/completion rows (10-250 tokens, so padding matters), batch 16,
max length 256, learning rate 1e-3 constant, seed 42, the same tiny Llama, the same threads
(all cores), in one process, one after another:

    trl-default       SFTConfig as a user gets it: its bf16 autocast (on even on the CPU) and
                      gradient checkpointing, random order, each batch padded to its longest
    trl-packing       tuned for a CPU: fp32, no checkpointing, packing (BFD, padding-free)
    trl-padding-free  tuned: fp32, no checkpointing, padding-free batches without packing
    trl-grouped       tuned: fp32, no checkpointing, train_sampling_strategy=group_by_length
    hf-trainer        transformers.Trainer, fp32, dynamic padding (DataCollatorForSeq2Seq)
    ours              the `llmtrain` sft stage on Ray Train, 1 worker (length-grouped batches)
    ours-packing      the sft stage with packing (BFD rows of 256, position_ids per sample)

The same loss everywhere: completion tokens plus EOS, mean over the batch's target tokens. The
prompts end on a token boundary ("answer:", completions start with a space), so tokenising
prompt and completion apart (ours) or together (TRL) gives the same ids; the run checks it.
tokens/s = non-padding tokens / train_runtime, both from the HF Trainer's own counters, so
Ray's start-up is not counted (the stage's wall time with it is printed). Each configuration
runs `--repeats` times; the best counts. The ratios are the last lines. Run it on an otherwise
idle machine: other load shifts all figures (the ratios less so).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH, MAX_LEN, LR, SEED = 16, 256, 1e-3, 42
TUNED = ("trl-packing", "trl-padding-free", "trl-grouped")
SAME = (
    "identical: rows and order of the file, token ids and loss targets (checked), max length "
    f"{MAX_LEN}, 1 epoch, batch {BATCH}, lr {LR} constant, seed {SEED}, fp32 weights, threads"
)
DIFFERS = [
    "trl-default uses bf16 autocast and gradient checkpointing (SFTConfig defaults); the "
    "others run fp32 without checkpointing",
    "batch order: random (trl-default, trl-packing rows, trl-padding-free, hf-trainer) vs "
    "length-grouped (trl-grouped, ours); so train_loss differs a little",
    "TRL computes the loss through its fused LM head (no full logits); HF Trainer and ours "
    "take the model's own loss",
    "ours runs in a Ray Train worker (torch.distributed, gloo, world size 1); its padding is "
    "to a multiple of 8",
    "trl-padding-free does not enforce max length without packing (rows over "
    f"{MAX_LEN} tokens stay whole)",
    f"packing (trl-packing, ours-packing) puts {BATCH} packed rows of up to {MAX_LEN} tokens "
    "in a step: the same tokens in fewer, larger steps, so a higher train_loss after 1 epoch",
]


def write_data(path: Path, n: int, seed: int = 0) -> Path:
    from llmtrain.trainer import tiny

    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            words = " ".join(tiny.sentence(rng) for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 12])))
            # The prompt ends on a token boundary: " words" starts a token either way.
            f.write(
                json.dumps({"prompt": f"#{i} repeat: {words}\nanswer:", "completion": f" {words}"})
            )
            f.write("\n")
    return path


def _common(out: Path) -> dict[str, Any]:
    return {
        "output_dir": str(out),
        "per_device_train_batch_size": BATCH,
        "num_train_epochs": 1,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "logging_steps": 50,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "use_cpu": True,
        "seed": SEED,
    }


def _load(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return tok, AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def _figures(trainer: Any) -> dict[str, Any]:
    metrics = trainer.train().metrics
    return {
        "tokens": trainer.state.num_input_tokens_seen,
        "seconds": metrics["train_runtime"],
        "train_loss": metrics["train_loss"],
    }


def trl_run(model_dir: Path, data: Path, out: Path, variant: str) -> dict[str, Any]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    tok, model = _load(model_dir)
    tuned = {"bf16": False, "gradient_checkpointing": False}
    extra = {
        "trl-default": {},
        "trl-packing": {**tuned, "packing": True},
        "trl-padding-free": {**tuned, "padding_free": True},
        "trl-grouped": {**tuned, "train_sampling_strategy": "group_by_length"},
    }[variant]
    # Padding-free without packing refuses a max length it cannot enforce: rows stay whole.
    max_length = None if variant == "trl-padding-free" else MAX_LEN
    args = SFTConfig(**_common(out), max_length=max_length, **extra)
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    rows = trainer.train_dataset
    figures = _figures(trainer)
    figures["bf16"], figures["gradient_checkpointing"] = args.bf16, args.gradient_checkpointing
    if variant == "trl-grouped":  # unpacked rows: compare them with ours
        labels = (
            rows["labels"]
            if "labels" in rows.column_names
            else [
                [t if m else -100 for t, m in zip(i, c, strict=True)]
                for i, c in zip(rows["input_ids"], rows["completion_mask"], strict=True)
            ]
        )
        figures["targets"] = _targets(rows["input_ids"], labels)
    return figures


def hf_run(model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    import datasets
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok, model = _load(model_dir)

    def encode(row: dict[str, str]) -> dict[str, list[int]]:
        prompt = tok(row["prompt"])["input_ids"]
        completion = tok(row["completion"], add_special_tokens=False)["input_ids"]
        ids = (prompt + completion + [tok.eos_token_id])[:MAX_LEN]
        labels = ([-100] * len(prompt) + completion + [tok.eos_token_id])[:MAX_LEN]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    ds = ds.map(encode, remove_columns=ds.column_names)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_common(out)),
        train_dataset=ds,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
    )
    return _figures(trainer)


def our_run(assets: Path, model_dir: Path, data: Path, out: Path, packing: bool) -> dict[str, Any]:
    import datasets
    import ray

    from llmtrain.trainer import engine
    from llmtrain.trainer.contract import StageConfig

    if not ray.is_initialized():  # after the in-process runs: its idle processes stay out
        ray.init(include_dashboard=False, log_to_driver=False)
    cfg = StageConfig.model_validate(
        {
            "job": "bench",
            "stage": {
                "name": out.name,
                "type": "sft",
                "dataset": {
                    "source": str(data),
                    "format": "prompt-completion",
                    "evalFraction": 0,
                    "preprocessing": {"deduplicate": False},
                },
                "hyperparameters": {
                    "batchSize": BATCH,
                    "epochs": 1,
                    "maxSeqLength": MAX_LEN,
                    "learningRate": LR,
                    "scheduler": "constant",
                    "packing": packing,
                    "loggingSteps": 50,
                    "seed": SEED,
                },
            },
            "model": {"tokenizer": {"source": str(assets / "tokenizer")}, "dtype": "float32"},
            "input_model": str(model_dir),
            "output_dir": str(out),
            "checkpointing": {"everySteps": 100000},
        }
    )
    started = time.time()
    result = engine.run(cfg)
    figures = {
        "tokens": result["tokens"],
        "seconds": result["train_runtime"],
        "train_loss": result["train_loss"],
        "wall_seconds": time.time() - started,
    }
    if not packing:
        rows = datasets.load_from_disk(str(out / "prepared" / "train"))
        figures["targets"] = _targets(rows["input_ids"], rows["labels"])
    return figures


def _targets(ids: list[list[int]], labels: list[list[int]]) -> str:
    """A digest of every row's ids and loss targets, whatever the row order."""
    import hashlib

    pairs = zip(ids, labels, strict=True)
    rows = sorted(
        json.dumps([i[:MAX_LEN], [t if t != -100 else None for t in lab[:MAX_LEN]]])
        for i, lab in pairs
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures as JSON.")
    parser.add_argument("--only", default="", help="Comma-separated configs (default: all).")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from llmtrain.trainer import tiny

    work = Path(tempfile.mkdtemp(prefix="llmtrain-bench-"))
    data = write_data(work / "sft.jsonl", args.samples)
    tiny.build_tokenizer(work / "tokenizer", tiny.write_corpus(work / "corpus.txt"))
    model_dir = tiny.build_model(work / "model", work / "tokenizer")
    configs: dict[str, Any] = {
        **{v: (lambda o, v=v: trl_run(model_dir, data, o, v)) for v in ("trl-default", *TUNED)},
        "hf-trainer": lambda o: hf_run(model_dir, data, o),
        "ours": lambda o: our_run(work, model_dir, data, o, packing=False),
        "ours-packing": lambda o: our_run(work, model_dir, data, o, packing=True),
    }
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(args.repeats):
        for name, fn in configs.items():
            figures = fn(work / f"{name}-{i}")
            figures["tokens_per_second"] = figures["tokens"] / figures["seconds"]
            runs.setdefault(name, []).append(figures)
            rate, n, secs = figures["tokens_per_second"], figures["tokens"], figures["seconds"]
            print(f"{name:16s} run {i}: {rate:9.0f} tokens/s ({n:.0f} tokens in {secs:.2f} s, "
                  f"train_loss {figures['train_loss']:.4f})", flush=True)  # fmt: skip
    best = {k: max(r["tokens_per_second"] for r in v) for k, v in runs.items()}
    if not {"ours", "ours-packing", "trl-default", "hf-trainer", "trl-grouped"} <= best.keys():
        print("best tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
        return {"tokens_per_second": best, "runs": runs}
    ours_name = max(("ours", "ours-packing"), key=lambda k: best[k])
    tuned_name = max((k for k in TUNED if k in best), key=lambda k: best[k])
    ours = best[ours_name]
    same_targets = runs["ours"][0]["targets"] == runs["trl-grouped"][0]["targets"]
    summary = {
        "tokens_per_second": best,
        "train_loss": {k: v[0]["train_loss"] for k, v in runs.items()},
        "ours": ours_name,
        "trl_tuned": tuned_name,
        "ours_vs_trl_default": ours / best["trl-default"],
        "ours_vs_trl_tuned": ours / best[tuned_name],
        "ours_vs_hf_trainer": ours / best["hf-trainer"],
        "same_token_ids_and_targets": same_targets,
        "ours_wall_seconds_with_ray_startup": min(r["wall_seconds"] for r in runs["ours"]),
        "cpus": os.cpu_count(),
        "samples": args.samples,
        "runs": runs,
    }
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print("\nbest tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
    print(SAME + (" (checked: ours = trl-grouped)" if same_targets else ""))
    if not same_targets:
        print("NOT identical: our token ids/targets differ from TRL's (see the digests)")
    print("differs: " + "; ".join(DIFFERS))
    print(f"ours ({ours_name}) vs TRL defaults ({best['trl-default']:.0f} tok/s): "
          f"{summary['ours_vs_trl_default']:.2f}x")  # fmt: skip
    print(f"ours ({ours_name}) vs TRL tuned ({tuned_name}, {best[tuned_name]:.0f} tok/s): "
          f"{summary['ours_vs_trl_tuned']:.2f}x")  # fmt: skip
    print(f"ours ({ours_name}) vs HF Trainer, dynamic padding ({best['hf-trainer']:.0f} tok/s): "
          f"{summary['ours_vs_hf_trainer']:.2f}x")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
