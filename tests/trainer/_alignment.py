"""Toy alignment data and stage configs for the alignment tests, and a run helper.

`run` trains a stage with the real worker loop in this process (helpers.run_in_process: the
stage module, PEFT, atomic checkpoints, resume and the final save are the engine's; only Ray is
left out), so each test costs seconds; test_alignment_pipeline.py runs stages on Ray Train.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from llmtrain.trainer.contract import StageConfig

from .helpers import Assets, run_in_process

GOOD = ["good", "nice", "kind", "great", "happy", "glad"]
BAD = ["bad", "rude", "mean", "awful", "sad", "cruel"]
NAMES = ["ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal"]
SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the old man", "a small child"]
# The toy preference file's own column names, mapped by dataset.columns.
PREFERENCE_COLUMNS = {"prompt": "question", "chosen": "good", "rejected": "bad"}


def write_preferences(path: Path, n: int = 96, seed: int = 0) -> Path:
    """Separable pairs: the chosen answer uses a 'good' word, the rejected one a 'bad' word."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            who, subject = rng.choice(NAMES), rng.choice(SUBJECTS)
            f.write(json.dumps({
                "question": f"question: {who} asks about {subject}.\nanswer: ",
                "good": f"{subject} is {rng.choice(GOOD)}.",
                "bad": f"{subject} is {rng.choice(BAD)}.",
            }) + "\n")  # fmt: skip
    return path


def write_prompts(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Distinct prompts (the data loader drops duplicates) with an `answer` column."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            who = rng.choice(NAMES)
            f.write(json.dumps({"prompt": f"question {i}: {who} says", "answer": f"hello {who}"}))
            f.write("\n")
    return path


def config(
    assets: Assets, out: Path, stage: dict[str, Any], input_model: str | None = None, **kw: Any
) -> StageConfig:
    """A StageConfig for `stage` (a StageSpec dict) starting from the tiny model."""
    return StageConfig.model_validate(
        {
            "job": "toy",
            "namespace": "tests",
            "stage": stage,
            "model": {"tokenizer": {"source": str(assets.tokenizer)}, "dtype": "float32"},
            "input_model": input_model or str(assets.model),
            "output_dir": str(out),
            **kw,
        }
    )


def run(cfg: StageConfig) -> Any:
    """Train in-process; the trainer gets `first_step` (its resume point), `resumed_from` and
    `records` (what ReportCallback sent towards the driver's metrics)."""
    trainer, records = run_in_process(cfg)
    begin = next(r for r in records if r["kind"] == "begin")
    end = next(r for r in records if r["kind"] == "end")
    trainer.first_step, trainer.resumed_from = begin["step"], end["resumed_from"]
    trainer.records = records
    return trainer


def monitor(cfg: StageConfig, records: list[dict[str, Any]]) -> Any:
    """The driver's Monitor fed with a run's records: its gauges and progress.json content."""
    from llmtrain.trainer.metrics import Monitor

    m = Monitor(cfg, Path(cfg.output_dir), queue=None)
    for record in records:
        m.apply(dict(record))
    return m


def gauge(m: Any, name: str) -> float | None:
    labels = {"namespace": "tests", "job": "toy", "stage": m.cfg.stage.name}
    value = m.metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def history(trainer: Any, key: str) -> list[float]:
    return [float(h[key]) for h in trainer.state.log_history if key in h]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)
