"""Checkpoints that count only when complete, resuming from the newest one, and final/.

    trainer = checkpoint.make_atomic(trainer, keep=2)    # any HF/TRL Trainer (subclass swap)
    trainer.train(resume_from_checkpoint=checkpoint.latest(ckpt_dir))
    checkpoint.save_final(ctx, trainer)                  # final/ (and merged/), atomically

Layout (docs/contracts.md §3) under `{stage}/checkpoints/`:

    .staging/checkpoint-40/       the HF Trainer writes here (weights or adapter, optimizer,
                                  scheduler, RNG per rank, trainer_state with step and epoch;
                                  DeepSpeed's engine state too)
    checkpoint-40/COMPLETE        after every rank finished, rank 0 adds the marker, renames
                                  the folder into place, and deletes all but the newest K

A crash mid-save leaves only `.staging/`, which the next start deletes. The HF Trainer resumes
the data position itself by skipping the batches already seen in the epoch. final/ and merged/
follow the same rule: written under a temporary name, marked, then renamed. The names are
the contract's (docs/contracts.md §3). Runs in the Ray Train workers; the driver only cleans.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtrain.trainer import adapters, models
from llmtrain.trainer.config import PeftMethod
from llmtrain.trainer.contract import (
    COMPLETE,
    FINAL,
    MERGED,
    STAGING,
    checkpoint_name,
    checkpoint_step,
)

if TYPE_CHECKING:
    from llmtrain.trainer.stages import StageContext


def complete(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        step = checkpoint_step(p.name)
        if step is not None and (p / COMPLETE).is_file():
            found.append((step, p))
    return sorted(found)


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete(root)
    return found[-1][1] if found else None


def clean(root: str | Path) -> list[Path]:
    """Delete the staging area and any checkpoint folder without a marker; return them."""
    root = Path(root)
    removed = []
    if (root / STAGING).exists():
        shutil.rmtree(root / STAGING, ignore_errors=True)
        removed.append(root / STAGING)
    if root.is_dir():
        for p in root.iterdir():
            if checkpoint_step(p.name) is not None and not (p / COMPLETE).is_file():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def prune(root: str | Path, keep: int) -> None:
    for _, path in complete(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def commit(staged: Path, target: Path, info: dict[str, Any] | None = None) -> Path:
    """Mark `staged` complete and rename it to `target` (replacing an older copy)."""
    (staged / COMPLETE).write_text(json.dumps({"time": time.time(), **(info or {})}) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged, target)
    return target


def barrier() -> None:
    """Wait for every Ray Train worker (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def make_atomic(trainer: Any, keep: int) -> Any:
    """Make `trainer` (a transformers.Trainer or subclass) save checkpoints atomically."""
    base = type(trainer)

    class AtomicCheckpoints(base):  # type: ignore[misc, valid-type]
        _llmtrain_staging = False

        def _get_output_dir(self, trial: Any) -> str:
            root = super()._get_output_dir(trial)
            return os.path.join(root, STAGING) if self._llmtrain_staging else root

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            root = Path(self._get_output_dir(trial))
            name = checkpoint_name(self.state.global_step)
            self._llmtrain_staging = True
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._llmtrain_staging = False
            barrier()  # every rank has written its shards (DeepSpeed, RNG state)
            if self.args.process_index == 0:
                commit(root / STAGING / name, root / name, {"step": self.state.global_step})
                prune(root, keep)
                with contextlib.suppress(OSError):  # only when empty: nothing else is staged
                    (root / STAGING).rmdir()
            barrier()

    AtomicCheckpoints.__name__ = AtomicCheckpoints.__qualname__ = base.__name__
    trainer.__class__ = AtomicCheckpoints
    return trainer


def save_final(ctx: StageContext, trainer: Any) -> dict[str, Any]:
    """final/ (full model or adapter, plus tokenizer) and, when asked, merged/; atomically.
    The `save` of most stages; returns the result.json fields it adds."""
    out = ctx.stage_dir
    staged, final = out / f".{FINAL}.tmp", out / FINAL
    trainer.save_model(str(staged))  # every rank: ZeRO-3 gathers the weights
    result: dict[str, Any] = {"output": str(final)}
    if ctx.rank == 0:
        ctx.tokenizer.save_pretrained(str(staged))
        commit(staged, final, {"step": trainer.state.global_step})
    barrier()
    peft = ctx.cfg.stage.peft
    if peft.merge and peft.method != PeftMethod.none:
        staged = out / f".{MERGED}.tmp"
        if ctx.rank == 0:
            dtype = models.resolve_dtype(ctx.cfg.model.dtype)
            adapters.merge(final, staged, dtype, ctx.tokenizer)
            commit(staged, out / MERGED)
        barrier()
        result["merged"] = str(out / MERGED)
    return result
