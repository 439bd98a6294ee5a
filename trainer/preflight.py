"""The preflight: every stage's data read exactly as training will read it, and the memory each
GPU will need, checked before any GPU is held.

    problems, figures = preflight.check(init)     # init: inputs.InitConfig
    # problems: ["spec.stages[0].dataset: /data/chat.jsonl[train] row 3: ...", ...]
    # figures: per stage, examples kept and dropped, token percentiles, the memory estimate

Each stage's own `prepare_data` (stages/*.py: data.py cleaning, encode.py tokenising, the
chat template's check) runs on the stage's tokenizer, so a format, column, template or
length problem shows here as it would in the driver. On top of that, chat data must give
every example a non-empty assistant mask: an example whose template marks nothing (or whose
assistant turns all fall past `maxSeqLength`) would train on nothing, silently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmtrain.trainer import data, encode, memory, models, prepared, stages
from llmtrain.trainer.config import DataFormat, StageType, stage_problems
from llmtrain.trainer.contract import StageConfig, hub_token
from llmtrain.trainer.inputs import InitConfig

log = logging.getLogger(__name__)
SHOWN = 5  # rows named per problem; the rest are counted


def check(init: InitConfig) -> tuple[list[str], list[dict[str, Any]]]:
    """(problems, figures) for every stage of `init`; no problems means the job may start."""
    problems: list[str] = []
    figures: list[dict[str, Any]] = []
    tokenizers: dict[str, Any] = {}
    shapes: dict[str, memory.Shapes | str] = {}
    for i, cfg in enumerate(init.stages):
        at = f"spec.stages[{i}]"
        found = [f"{at}.{field}: {msg}" for field, msg in stage_problems(cfg.stage)]
        fig: dict[str, Any] = {"stage": cfg.stage.name}
        if not found:
            try:
                tok = _tokenizer(cfg, tokenizers)
            except (OSError, ValueError) as e:
                found.append(f"spec.model.tokenizer: cannot load: {e}")
            else:
                found += _data(cfg, tok, f"{at}.dataset", fig)
        fig["memory"], why = _memory(cfg, init, shapes)
        if why:
            found.append(f"{at}: {why}")
        problems += found
        figures.append(fig)
    return problems, figures


def _tokenizer(cfg: StageConfig, cache: dict[str, Any]) -> Any:
    """The stage's tokenizer. A later stage's input model (an earlier stage's final/) does not
    exist yet: its tokenizer is the base model's, which that stage saves alongside."""
    source = _tokenizer_source(cfg)
    if source not in cache:
        cache[str(source)] = models.load_tokenizer(cfg.model_copy(update={"input_model": source}))
    return cache[str(source)]


def _data(cfg: StageConfig, tok: Any, at: str, fig: dict[str, Any]) -> list[str]:
    spec, hp = cfg.stage.dataset, cfg.stage.hyperparameters
    out: list[str] = []
    if spec.format == DataFormat.messages:
        out += _empty_masks(spec, tok, at)
    try:
        train, evaluation, report = stages.load(cfg.stage.type).prepare_data(cfg, tok)
    except (data.DataError, ValueError, KeyError, TypeError) as e:
        return out + [f"{at}: {e}"]
    if not out and _same_tokenizer(cfg):
        _keep(cfg, train, evaluation, report)
    splits = report.splits.values()
    dropped: dict[str, int] = {}
    for s in splits:
        for reason, n in s.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    lost = dropped.get("no_target_tokens", 0)
    if spec.format == DataFormat.messages and lost and not out:
        out.append(
            f"{at}: {lost} example(s) lose every assistant token to truncation at "
            f"hyperparameters.maxSeqLength={hp.max_seq_length}; raise it or drop them"
        )
    lengths = _lengths(train, cfg, tok)
    over = sum(n > hp.max_seq_length for n in lengths) if "length" not in train.column_names else 0
    fig.update(
        kept=report.splits["train"].kept,
        heldOut=report.splits["train"].held_out,
        dropped=dropped,
        truncated=sum(s.truncated for s in splits) + over,
        tokens=_percentiles(lengths),
    )
    return out


def _tokenizer_source(cfg: StageConfig) -> str | None:
    given = cfg.input_model if cfg.input_model and Path(cfg.input_model).exists() else None
    return cfg.model.tokenizer.source or given or cfg.model.source


def _same_tokenizer(cfg: StageConfig) -> bool:
    """The driver will load the tokenizer this check used (_tokenizer)."""
    source = _tokenizer_source(cfg)
    return source is not None and models.tokenizer_dir(source) == models.tokenizer_source(cfg)


def _keep(cfg: StageConfig, train: Any, evaluation: Any, report: Any) -> None:
    """Save the tokenised data where the stage's driver looks first (prepared.py): it then
    skips tokenising, and loading the tokenizer. Storage the initializer cannot write (no
    shared volume here) only means the driver tokenises again."""
    try:
        prepared.save(cfg, Path(cfg.output_dir), train, evaluation, report)
    except OSError as e:
        log.info("stage %s: prepared data not kept (%s)", cfg.stage.name, e)


def _empty_masks(spec: Any, tok: Any, at: str) -> list[str]:
    """Rows (numbered as in the source, from 0) whose chat template marks no assistant token."""
    out = []
    for split in [s for s in (spec.split, spec.eval_split) if s]:
        try:
            raw = data.load_raw(spec, split)
        except data.DataError:
            return []  # prepare_data reports it
        column = data.columns(spec)["messages"]
        if column not in raw.column_names or not getattr(tok, "chat_template", None):
            return []
        bad = []
        for row, messages in enumerate(raw[column]):
            if not messages:
                continue  # an empty sample: cleaning drops it
            try:
                _, mask = encode._assistant_mask(tok, messages)  # exactly what tokenize uses
            except Exception as e:  # a message the template cannot render
                out.append(f"{at}: {spec.source}[{split}] row {row}: chat template failed: {e}")
                continue
            if not any(mask):
                bad.append(row)
        if bad:
            rows = ", ".join(map(str, bad[:SHOWN])) + (
                f" (+{len(bad) - SHOWN})" if bad[SHOWN:] else ""
            )
            out.append(
                f"{at}: {spec.source}[{split}] row(s) {rows}: the assistant mask is empty "
                "(no assistant reply the chat template marks for the loss)"
            )
    return out


def _lengths(ds: Any, cfg: StageConfig, tok: Any) -> list[int]:
    """Tokens per row as trained: the encoded rows (sft, pretrain), else the longest text a
    row makes (prompt + response for preference pairs, the prompt for RL prompts)."""
    if "length" in ds.column_names:
        return list(ds["length"])

    def count(value: Any) -> int:
        if isinstance(value, list):  # chat messages
            return len(tok.apply_chat_template(value, tokenize=True))
        return len(tok(str(value))["input_ids"])

    out = []
    for row in ds:
        prompt = count(row["prompt"]) if "prompt" in row and row["prompt"] is not None else 0
        answers = [count(row[c]) for c in ("chosen", "rejected") if c in row]
        out.append(prompt + max(answers, default=0))
    return out


def _percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def q(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": ordered[-1]}


def _memory(
    cfg: StageConfig, init: InitConfig, cache: dict[str, memory.Shapes | str]
) -> tuple[dict[str, int] | None, str | None]:
    """The stage's estimate, and why it cannot run when it exceeds the GPU's memory."""
    source = cfg.model.source
    key = source or "architecture"
    if key not in cache:
        try:
            cache[key] = memory.load_shapes(
                source,
                cfg.model.architecture,
                trust_remote_code=cfg.model.trust_remote_code,
                token=hub_token(),
            )
        except (OSError, ValueError) as e:
            cache[key] = f"spec.model: cannot read the model's config for the memory estimate: {e}"
    shapes = cache[key]
    if isinstance(shapes, str):
        return None, shapes
    est = memory.estimate(shapes, cfg, init.device)
    gpu = init.gpu_memory
    if gpu and est.total > gpu:
        hp, st = cfg.stage.hyperparameters, cfg.stage
        zero = cfg.distributed.zero_stage if cfg.distributed.strategy == "deepspeed" else "off"
        n = 2 if st.type == StageType.dpo else 1
        return est.as_dict(), (
            f"needs an estimated {est.summary()} per GPU, more than the {memory.gib(gpu)} a GPU "
            f"has (batchSize {hp.batch_size} x{n}, maxSeqLength {hp.max_seq_length}, peft "
            f"{st.peft.method}, ZeRO {zero}, {cfg.workers} GPU(s)): lower batchSize or "
            "maxSeqLength, turn on gradientCheckpointing, use LoRA/QLoRA or a higher ZeRO stage"
        )
    return est.as_dict(), None
