"""Load, clean and split a stage's dataset, and report what was kept and dropped.

    train, eval, report = data.load_splits(cfg.stage.dataset, seed=42)
    log.info(report.summary())          # "train: loaded 400, kept 380, dropped duplicate=20"

Sources (`DatasetSpec.source`): a local jsonl/json/parquet/csv/txt file, a folder written by
`save_to_disk`, a folder of data files, or a hub dataset id (token from `HF_TOKEN`; datasets
honours `HF_HUB_OFFLINE`). Cleaning (`DatasetSpec.preprocessing`) works on the columns the
format uses: whitespace normalisation, empty samples, exact duplicates. Over-long samples are
handled after tokenisation, in `encode.py`, which adds its counts to the same report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtrain.trainer.config import DataFormat, DatasetSpec
from llmtrain.trainer.contract import hub_token

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem with the user's data: the message names the file, split or column."""


# Logical fields each format needs (mapped to real column names by DatasetSpec.columns).
FIELDS: dict[str, tuple[str, ...]] = {
    DataFormat.text: ("text",),
    DataFormat.prompt_completion: ("prompt", "completion"),
    DataFormat.messages: ("messages",),
    DataFormat.preference: ("prompt", "chosen", "rejected"),
    DataFormat.prompt_only: ("prompt",),
}
# Fields that may be absent: preference data is often {chosen, rejected} with the prompt inside.
OPTIONAL: dict[str, tuple[str, ...]] = {DataFormat.preference: ("prompt",)}

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_BUILDERS.update({".txt": "text", ".text": "text"})


@dataclass
class SplitReport:
    loaded: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    held_out: int = 0
    sequences: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "dropped": dict(self.dropped)}


@dataclass
class Report:
    source: str
    splits: dict[str, SplitReport] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        for name, s in self.splits.items():
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(s.dropped.items()) if v) or "none"
            held = f", held out {s.held_out} for eval" if s.held_out else ""
            parts.append(
                f"{name}: loaded {s.loaded}, dropped {dropped}{held}, kept {s.kept}, "
                f"truncated {s.truncated}; {s.sequences} sequences, {s.tokens} tokens"
            )
        return f"data {self.source}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, **{k: v.as_dict() for k, v in self.splits.items()}}


def columns(spec: DatasetSpec) -> dict[str, str]:
    """Logical field -> column name for the spec's format."""
    return {f: getattr(spec.columns, f) for f in FIELDS[spec.format]}


def load_raw(spec: DatasetSpec, split: str) -> Any:
    """One split of the source as a `datasets.Dataset`, or a DataError that names the source."""
    import datasets

    src = spec.source
    path = Path(src)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{src}: no split {split!r} (has {sorted(loaded)})")
                return loaded[split]
            if split != "train":
                raise DataError(f"{src}: a single dataset has no split {split!r}")
            return loaded
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                known = sorted(_BUILDERS)
                raise DataError(f"{src}: unknown file type {path.suffix!r} (use {known})")
            if split != "train":
                raise DataError(f"{src}: a single file only has the split 'train', not {split!r}")
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split)
        if src.startswith(("/", "./", "../", "~")) or path.suffix.lower() in _BUILDERS:
            raise DataError(f"{src}: no such file or directory")
        return datasets.load_dataset(src, spec.name, split=split, token=hub_token())
    except DataError:
        raise
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        if "corresponds to no data" in str(e):  # datasets' words for a file without rows
            raise DataError(f"{src}: the dataset is empty") from e
        raise DataError(f"{src} (split {split!r}): {e}") from e
    except datasets.exceptions.DatasetGenerationError as e:  # a file that does not parse
        raise DataError(f"{src} (split {split!r}): {e.__cause__ or e}") from e


def _check_columns(ds: Any, spec: DatasetSpec, where: str) -> dict[str, str]:
    cols = columns(spec)
    optional = OPTIONAL.get(spec.format, ())
    missing = [c for f, c in cols.items() if c not in ds.column_names and f not in optional]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing} needed by format {spec.format!r}; the data has "
            f"{ds.column_names} (map names with dataset.columns)"
        )
    return {f: c for f, c in cols.items() if c in ds.column_names}


_WS = re.compile(r"[ \t]+")


def _normalize(value: Any) -> Any:
    if isinstance(value, str):
        return "\n".join(_WS.sub(" ", line).strip() for line in value.strip().split("\n"))
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) if k == "content" else v for k, v in value.items()}
    return value


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return not value or all(_is_empty(v) for v in value)
    if isinstance(value, dict):
        return _is_empty(value.get("content"))
    return False


def clean(ds: Any, spec: DatasetSpec, report: SplitReport, where: str) -> Any:
    """Apply `spec.preprocessing` to the format's columns; count what is dropped and why."""
    cols = _check_columns(ds, spec, where)
    pre = spec.preprocessing
    report.loaded = len(ds)
    if len(ds) == 0:
        raise DataError(f"{where}: the dataset is empty")
    if pre.normalize_whitespace:
        names = list(cols.values())
        ds = ds.map(lambda row: {c: _normalize(row[c]) for c in names}, desc="normalise")
    keep: list[int] = []
    seen: set[bytes] = set()
    for i, row in enumerate(ds.select_columns(list(cols.values()))):
        if pre.drop_empty and any(_is_empty(row[c]) for c in row):
            report.dropped["empty"] += 1
            continue
        if pre.deduplicate:
            key = hashlib.blake2b(json.dumps(row, sort_keys=True, default=str).encode()).digest()
            if key in seen:
                report.dropped["duplicate"] += 1
                continue
            seen.add(key)
        keep.append(i)
    if not keep:
        raise DataError(f"{where}: no samples left after cleaning ({dict(report.dropped)})")
    report.kept = len(keep)
    return ds.select(keep) if len(keep) < len(ds) else ds


def load_splits(spec: DatasetSpec, seed: int) -> tuple[Any, Any | None, Report]:
    """Cleaned train and eval datasets (eval is None when nothing is held out) and the report."""
    report = Report(spec.source)
    train_report = report.splits.setdefault("train", SplitReport())
    train = clean(load_raw(spec, spec.split), spec, train_report, f"{spec.source}[{spec.split}]")
    evaluation = None
    if spec.eval_split:
        eval_report = report.splits.setdefault("eval", SplitReport())
        raw = load_raw(spec, spec.eval_split)
        evaluation = clean(raw, spec, eval_report, f"{spec.source}[{spec.eval_split}]")
    elif spec.eval_fraction > 0 and int(len(train) * spec.eval_fraction) >= 1:
        parts = train.train_test_split(test_size=spec.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        eval_report = report.splits.setdefault("eval", SplitReport())
        eval_report.loaded = eval_report.kept = len(evaluation)
        train_report.kept = len(train)
        train_report.held_out = len(evaluation)
    if spec.max_samples is not None and len(train) > spec.max_samples:
        train_report.dropped["max_samples"] += len(train) - spec.max_samples
        train = train.select(range(spec.max_samples))
        train_report.kept = len(train)
    return train, evaluation, report
