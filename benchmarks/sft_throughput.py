"""SFT throughput: our `sft` stage against TRL's `SFTTrainer`, same model, data and machine.

    python -m benchmarks.sft_throughput [--samples 1500] [--repeats 2] [--out results.json]

One epoch over the same prompt/completion data (lengths vary 10-250 tokens, so padding
matters), batch 16, max length 256, on the same tiny Llama, in one process, one after another:

    trl-default   SFTTrainer, defaults (pads every batch to its longest sample)
    trl-packing   SFTTrainer, packing=True (BFD + padding-free: one flattened row per batch)
    trl-grouped   SFTTrainer, train_sampling_strategy="group_by_length" (like our default)
    ours          `llmtrain` sft stage on Ray Train, 1 worker, packing off (length-grouped)
    ours-packing  `llmtrain` sft stage, packing on (BFD rows of 256, position_ids per sample)

tokens/s = non-padding tokens seen / train_runtime, both from the HF Trainer's own counters
(`include_num_input_tokens_seen="non_padding"`), so Ray's start-up is not counted; the stage's
wall time with start-up is printed too. Each config runs `--repeats` times; the best counts.
Run it on an otherwise idle machine: other load shifts all figures (the ratios less so).
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

BATCH, MAX_LEN, LR = 16, 256, 1e-3


def write_data(path: Path, n: int, seed: int = 0) -> Path:
    from llmtrain.trainer import tiny

    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            words = " ".join(tiny.sentence(rng) for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 12])))
            f.write(json.dumps({"prompt": f"#{i} repeat: {words}\nanswer: ", "completion": words}))
            f.write("\n")
    return path


def trl_run(
    model_dir: Path, data: Path, out: Path, packing: bool, grouped: bool = False
) -> dict[str, float]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        max_length=MAX_LEN,
        learning_rate=LR,
        lr_scheduler_type="constant",
        packing=packing,
        train_sampling_strategy="group_by_length" if grouped else "random",
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=True,
        seed=42,
    )
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    metrics = trainer.train().metrics
    return {"tokens": trainer.state.num_input_tokens_seen, "seconds": metrics["train_runtime"]}


def our_run(
    assets: Path, model_dir: Path, data: Path, out: Path, packing: bool
) -> dict[str, float]:
    from llmtrain.trainer import engine
    from llmtrain.trainer.contract import StageConfig

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
    return {
        "tokens": result["tokens"],
        "seconds": result["train_runtime"],
        "wall_seconds": time.time() - started,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures as JSON.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    from llmtrain.trainer import tiny

    work = Path(tempfile.mkdtemp(prefix="llmtrain-bench-"))
    data = write_data(work / "sft.jsonl", args.samples)
    tiny.build_tokenizer(work / "tokenizer", tiny.write_corpus(work / "corpus.txt"))
    model_dir = tiny.build_model(work / "model", work / "tokenizer")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict[str, float]]] = {}
    for i in range(args.repeats):
        for name, fn in (
            ("trl-default", lambda o: trl_run(model_dir, data, o, packing=False)),
            ("trl-packing", lambda o: trl_run(model_dir, data, o, packing=True)),
            ("trl-grouped", lambda o: trl_run(model_dir, data, o, packing=False, grouped=True)),
            ("ours", lambda o: our_run(work, model_dir, data, o, packing=False)),
            ("ours-packing", lambda o: our_run(work, model_dir, data, o, packing=True)),
        ):
            figures = fn(work / f"{name}-{i}")
            figures["tokens_per_second"] = figures["tokens"] / figures["seconds"]
            runs.setdefault(name, []).append(figures)
            rate, n, secs = figures["tokens_per_second"], figures["tokens"], figures["seconds"]
            print(f"{name:13s} run {i}: {rate:9.0f} tokens/s ({n:.0f} tokens in {secs:.2f} s)")
    best = {k: max(r["tokens_per_second"] for r in v) for k, v in runs.items()}
    ours = max(best["ours"], best["ours-packing"])
    trl_best = max(best["trl-default"], best["trl-packing"], best["trl-grouped"])
    summary = {
        "tokens_per_second": best,
        "ours_vs_trl_default": ours / best["trl-default"],
        "ours_vs_trl_packing": ours / best["trl-packing"],
        "ours_vs_trl_best": ours / trl_best,
        "ours_unpacked_vs_trl_default": best["ours"] / best["trl-default"],
        "ours_wall_seconds_with_ray_startup": min(r["wall_seconds"] for r in runs["ours"]),
        "cpus": os.cpu_count(),
        "samples": args.samples,
        "runs": runs,
    }
    print("\nbest tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()))
    print(f"ours (best config) vs TRL defaults: {summary['ours_vs_trl_default']:.2f}x")
    print(f"ours (best config) vs TRL packing:  {summary['ours_vs_trl_packing']:.2f}x")
    print(f"ours (best config) vs TRL's best:   {summary['ours_vs_trl_best']:.2f}x")
    print(f"ours without packing vs TRL defaults: {summary['ours_unpacked_vs_trl_default']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
