"""Helpers for the trainer tests: tiny assets, stage configs, in-process runs, a scraper."""

from __future__ import annotations

import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.trainer import tiny
from llmtrain.trainer.contract import StageConfig


@dataclass
class Assets:
    root: Path
    tokenizer: Path
    model: Path
    corpus: Path
    instructions: Path
    chats: Path


def stage_config(
    assets: Assets,
    out: Path,
    stage_type: str,
    dataset: dict[str, Any],
    *,
    input_model: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    **extra: Any,
) -> StageConfig:
    """A StageConfig for the tiny assets; `extra` sets top-level fields (workers, peft, ...)."""
    stage: dict[str, Any] = {
        "name": out.name,
        "type": stage_type,
        "dataset": dataset,
        "hyperparameters": {
            "maxSeqLength": 64,
            "batchSize": 8,
            "learningRate": 3e-3,
            "loggingSteps": 5,
            "scheduler": "constant",
            **(hyperparameters or {}),
        },
    }
    if "peft" in extra:
        stage["peft"] = extra.pop("peft")
    return StageConfig.model_validate(
        {
            "job": "tiny",
            "namespace": "tests",
            "stage": stage,
            "model": {
                "tokenizer": {"source": str(assets.tokenizer)},
                "architecture": tiny.ARCHITECTURE,
                "dtype": "float32",
            },
            "input_model": input_model,
            "output_dir": str(out),
            **extra,
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """Polls a /metrics endpoint in the background; keeps the last page with a step > 0."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.page = ""
        self.pages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                page = urllib.request.urlopen(self.url, timeout=2).read().decode()
            except OSError:
                continue
            self.pages += 1
            step = [ln for ln in page.splitlines() if ln.startswith("llmtrain_train_step{")]
            if step and float(step[0].rsplit(" ", 1)[1]) > 0:
                self.page = page

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Run:
    cfg: StageConfig
    out: Path
    result: dict[str, Any]
    seconds: float
    metrics_page: str = ""


PRETRAIN_STEPS = 60
PRETRAIN_BATCH, PRETRAIN_BLOCK = 16, 128


def pretrain_config(assets: Assets, out: Path, **extra: Any) -> StageConfig:
    """About 2.5 epochs over the tiny corpus; slow enough (seconds) to be stopped midway."""
    return stage_config(
        assets,
        out,
        "pretrain",
        {"source": str(assets.corpus), "format": "text", "evalFraction": 0.05},
        hyperparameters={
            "maxSteps": PRETRAIN_STEPS,
            "batchSize": PRETRAIN_BATCH,
            "maxSeqLength": PRETRAIN_BLOCK,
            "evalSteps": 20,
        },
        checkpointing={"everySteps": 10, "keep": 2},
        **extra,
    )


def build_assets(root: Path) -> Assets:
    corpus = tiny.write_corpus(root / "corpus.txt")
    tiny.build_tokenizer(root / "tokenizer", corpus)
    tiny.build_model(root / "model", root / "tokenizer")
    return Assets(
        root=root,
        tokenizer=root / "tokenizer",
        model=root / "model",
        corpus=corpus,
        instructions=tiny.write_instructions(root / "instructions.jsonl"),
        chats=tiny.write_chats(root / "chats.jsonl"),
    )


class ListQueue:
    """Stands in for the driver's Ray queue when a test runs the worker loop in-process."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put_nowait(self, item: dict[str, Any]) -> None:
        self.items.append(item)


def run_in_process(cfg: StageConfig) -> tuple[Any, list[dict[str, Any]]]:
    """Prepare data as the driver does, then run the worker loop in this process (no Ray).

    For tests of what the loop builds (layer types, callbacks) that need the live objects.
    """
    from llmtrain.trainer import loop, prepared, stages

    prepared.prepare(cfg, stages.load(cfg.stage.type), Path(cfg.output_dir))
    queue = ListQueue()
    trainer = loop.train_worker({"cfg": cfg.model_dump_json(), "queue": queue, "in_process": True})
    return trainer, queue.items


def losses(history: list[dict[str, Any]]) -> list[float]:
    return [float(h["loss"]) for h in history if "loss" in h]


def read_history(stage_dir: Path) -> list[dict[str, Any]]:
    """The stage's metrics.jsonl (the trainer's log history)."""
    import json

    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
