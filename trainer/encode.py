"""Tokenise cleaned samples into `input_ids` + `labels`, pack them, and collate batches.

    ds = encode.tokenize(ds, spec, tokenizer, max_len=1024, report=report.splits["train"])
    ds = encode.pack(ds, max_len=1024)            # SFT: best-fit-decreasing rows, position_ids
    ds = encode.blocks(ds, block=1024)            # pretraining: concatenate and chunk
    collate = encode.Collator(pad_id=tokenizer.pad_token_id)

Labels are -100 where no loss is wanted: the prompt (format `prompt-completion`) and every
non-assistant token (format `messages`, from the chat template's `{% generation %}` marks;
a template without them is an error, never a silent full-sequence loss).

Packed rows carry `position_ids` that restart at 0 for every sample and no attention mask:
transformers then builds a block-diagonal causal mask (sdpa/eager) or uses varlen flash
attention, so samples never attend to each other and the loss equals unpacked training.
This needs `use_cache=False` in the forward pass, which the HF Trainer sets for training
(with a KV cache transformers treats the positions as a continuation instead).
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from llmtrain.trainer.config import DataFormat, DatasetSpec
from llmtrain.trainer.data import DataError, SplitReport, columns

log = logging.getLogger(__name__)
IGNORE = -100


def _assistant_mask(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


def check_chat_template(tokenizer: Any, messages: list[dict[str, Any]], where: str) -> None:
    """Fail unless the template marks exactly the assistant turns of `messages` for the loss."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: format 'messages' needs a tokenizer with a chat template")
    ids, mask = _assistant_mask(tokenizer, messages)
    replies = [m["content"] for m in messages if m.get("role") == "assistant" and m.get("content")]
    if replies and not any(mask):
        raise DataError(
            f"{where}: the tokenizer's chat template cannot mark assistant tokens (no "
            "{% generation %} block), so the loss cannot be limited to assistant turns; use a "
            "template with {% generation %}...{% endgeneration %} around assistant content"
        )
    marked = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    lost = [r for r in replies if r.strip() not in marked]
    if lost:
        raise DataError(
            f"{where}: the chat template's assistant mask misses reply text {lost[0][:40]!r}"
        )


def _fit(ids: list[int], labels: list[int], max_len: int, drop: bool) -> tuple[Any, Any, str]:
    if len(ids) <= max_len:
        return ids, labels, ""
    if drop:
        return None, None, "overlong"
    return ids[:max_len], labels[:max_len], "truncated"


def tokenize(
    ds: Any, spec: DatasetSpec, tokenizer: Any, max_len: int, report: SplitReport, where: str = ""
) -> Any:
    """`input_ids`, `labels` and `length` per sample; over-long ones dropped or truncated."""
    cols = columns(spec)
    fmt = spec.format
    drop = spec.preprocessing.drop_overlong and fmt != DataFormat.text
    eos = tokenizer.eos_token_id
    where = where or spec.source
    if fmt == DataFormat.messages:
        check_chat_template(tokenizer, ds[0][cols["messages"]], where)

    def one(row: dict[str, Any]) -> tuple[list[int], list[int]]:
        if fmt == DataFormat.text:
            ids = tokenizer(row[cols["text"]])["input_ids"] + [eos]
            return ids, list(ids)
        if fmt == DataFormat.prompt_completion:
            prompt, completion = row[cols["prompt"]], row[cols["completion"]]
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise DataError(f"{where}: prompt and completion must be strings")
            p = tokenizer(prompt)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"]
            if not c or c[-1] != eos:
                c = c + [eos]
            return p + c, [IGNORE] * len(p) + c
        if fmt == DataFormat.messages:
            ids, mask = _assistant_mask(tokenizer, row[cols["messages"]])
            return ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
        raise DataError(f"{where}: format {fmt!r} is not a language-modelling format")

    def batch(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "length": [], "status": []}
        for i in range(len(next(iter(rows.values())))):
            ids: list[int] | None
            labels: list[int] | None
            ids, labels = one({k: v[i] for k, v in rows.items()})
            if fmt != DataFormat.text:  # text is chunked into blocks later: never too long
                ids, labels, status = _fit(ids, labels, max_len, drop)
            else:
                status = ""
            if ids is not None and all(t == IGNORE for t in labels[1:]):
                ids, labels, status = None, None, "no_target_tokens"
            out["input_ids"].append(ids or [])
            out["labels"].append(labels or [])
            out["length"].append(len(ids or []))
            out["status"].append(status)
        return out

    ds = ds.map(batch, batched=True, remove_columns=ds.column_names, desc="tokenise")
    status = ds["status"]
    report.truncated += status.count("truncated")
    for reason in ("overlong", "no_target_tokens"):
        report.dropped[reason] += status.count(reason)
    keep = [i for i, s in enumerate(status) if s in ("", "truncated")]
    if not keep:
        raise DataError(f"{where}: no samples left after tokenisation ({dict(report.dropped)})")
    report.kept = len(keep)
    if report.truncated:
        log.warning("%s: %d samples truncated to %d tokens", where, report.truncated, max_len)
    ds = ds.select(keep).remove_columns("status")
    report.sequences, report.tokens = len(ds), sum(ds["length"])
    return ds


def blocks(ds: Any, block: int, report: SplitReport | None = None) -> Any:
    """Concatenate every sample (each ends with EOS) and cut into `block`-token rows."""
    import datasets

    ids = [t for row in ds["input_ids"] for t in row]
    n = len(ids) // block
    if n == 0:
        raise DataError(f"only {len(ids)} tokens: not enough for one block of {block}")
    rows = [ids[i * block : (i + 1) * block] for i in range(n)]
    if report is not None:
        report.sequences, report.tokens = n, n * block
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows, "length": [block] * n})


def pack(ds: Any, max_len: int, report: SplitReport | None = None) -> Any:
    """Best-fit-decreasing packing into rows of at most `max_len` tokens, with position_ids."""
    import datasets

    lengths, all_ids, all_labels = ds["length"], ds["input_ids"], ds["labels"]
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin), sorted: best fit is a bisect away
    for i in sorted(range(len(ds)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            space, b = free.pop(k)
        else:
            space, b = max_len, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - lengths[i], b))
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in members:
            ids += all_ids[i]
            # The first token of a sample is never a target: no prediction across samples.
            labels += [IGNORE] + all_labels[i][1:]
            pos += list(range(lengths[i]))
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["position_ids"].append(pos)
        out["length"].append(len(ids))
    if report is not None:
        report.sequences = len(bins)
    return datasets.Dataset.from_dict(out)


class Collator:
    """Right-pads a batch. Rows with `position_ids` (packed) get no attention mask, so the
    model derives sample boundaries from the positions; other rows get a padding mask."""

    def __init__(self, pad_id: int, multiple_of: int = 8) -> None:
        self.pad_id = pad_id
        self.multiple_of = multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        width = -(-width // self.multiple_of) * self.multiple_of

        def pad(key: str, value: int) -> Any:
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

        batch = {"input_ids": pad("input_ids", self.pad_id), "labels": pad("labels", IGNORE)}
        if "position_ids" in rows[0]:
            # Padding continues counting from the row's end: one more "sample" with no targets.
            batch["position_ids"] = torch.tensor(
                [r["position_ids"] + list(range(width - len(r["position_ids"]))) for r in rows]
            )
        else:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
            )
        return batch
