"""A stage's prepared data: tokenised once, saved to `{stage}/prepared/`, read by every worker.

    report = prepared.prepare(cfg, stage, out)      # the driver: reuse, or tokenise and save
    prepared.save(cfg, out, train, evaluation, data_report)   # the initializer's preflight

The initializer's preflight tokenises each stage's data anyway (preflight.py); it saves the
result under the same key, so the stage's driver finds it and imports no tokenizer. The key
changes whenever the prepared data would: the data spec, the tokenizer and the lengths.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from llmtrain.trainer import checkpoint, models
from llmtrain.trainer.contract import PREPARED, StageConfig, read_json, write_json

log = logging.getLogger(__name__)


def key(cfg: StageConfig) -> str:
    src = Path(cfg.stage.dataset.source)
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime) for p in [src] if p.exists()]
    hp = cfg.stage.hyperparameters
    parts = [
        cfg.stage.type,
        cfg.stage.dataset.model_dump_json(),
        models.tokenizer_source(cfg),
        hp.max_seq_length,
        hp.packing,
        hp.seed,
        stamp,
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def prepare(cfg: StageConfig, stage: Any, out: Path) -> dict[str, Any]:
    """The stage's prepared data in `out`: reused while its key holds, else made with the
    stage module's `prepare_data` and saved; returns the data report."""
    report = read_json(out / PREPARED / "report.json")
    if report and report.get("key") == key(cfg):
        log.info("reusing prepared data in %s: %s", out / PREPARED, report.get("summary"))
        return report
    import datasets

    datasets.disable_progress_bars()  # one summary line says what happened
    train, evaluation, data_report = stage.prepare_data(cfg, models.load_tokenizer(cfg))
    return save(cfg, out, train, evaluation, data_report)


def save(
    cfg: StageConfig, out: Path, train: Any, evaluation: Any, data_report: Any
) -> dict[str, Any]:
    """Write the datasets and their report atomically (checkpoint.commit); returns the report."""
    summary = data_report.summary()
    log.info("%s", summary)
    staging = out / f".{PREPARED}.tmp"
    train.save_to_disk(str(staging / "train"))
    if evaluation is not None:
        evaluation.save_to_disk(str(staging / "eval"))
    report = {"key": key(cfg), "summary": summary, **data_report.as_dict()}
    write_json(staging / "report.json", report)
    checkpoint.commit(staging, out / PREPARED)
    return report
