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

With an object store (StageConfig.object_store) the stage directory has a copy in the bucket,
kept by `Mirror`: rank 0 uploads each checkpoint after renaming it, in a background thread
while training goes on (the marker last, then the bucket is pruned to `keep` too; the next
save, and the end of training, wait for it); the driver pulls the newest complete checkpoint
and an s3:// input model before training, and pushes final/, merged/, progress.json and
metrics.jsonl at the end, result.json last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtrain.trainer import adapters, models, objectstore
from llmtrain.trainer.config import PeftMethod
from llmtrain.trainer.contract import (
    CHECKPOINTS,
    COMPLETE,
    FINAL,
    MERGED,
    METRICS,
    PROGRESS,
    RESULT,
    STAGING,
    StageConfig,
    checkpoint_name,
    checkpoint_step,
    stage_uri,
)

if TYPE_CHECKING:
    from llmtrain.trainer.stages import StageContext

log = logging.getLogger(__name__)


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


def make_atomic(trainer: Any, keep: int, mirror: Mirror | None = None) -> Any:
    """Make `trainer` (a transformers.Trainer or subclass) save checkpoints atomically, and
    upload each one to `mirror`'s bucket."""
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
                if mirror is not None:
                    mirror.push_checkpoint(root / name, keep)
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


class Mirror:
    """The stage directory's copy in the object store (`{uri}/{job}/{stage}`)."""

    def __init__(self, cfg: StageConfig) -> None:
        assert cfg.object_store is not None
        self.store = objectstore.connect(cfg.object_store)
        self.uri = stage_uri(cfg) or ""
        self.local = Path(cfg.output_dir)
        # The storage root: `{root}/{job}/{stage}` locally is `{store uri}/{job}/{stage}`.
        self.root = self.local.parent.parent
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-upload")
        self._pending: Future[None] | None = None

    @classmethod
    def of(cls, cfg: StageConfig) -> Mirror | None:
        return cls(cfg) if cfg.object_store is not None else None

    def push_checkpoint(self, path: Path, keep: int) -> None:
        """Upload `path` in the background while training goes on. The previous upload
        finishes first: one at a time, and before the local prune may delete its folder."""
        self.wait()
        self._pending = self._uploader.submit(self._push, path, keep)

    def wait(self) -> None:
        """Block until the checkpoint upload in flight is stored; raise what it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _push(self, path: Path, keep: int) -> None:
        t0 = time.monotonic()
        sent = self.store.upload_dir(path, f"{self.uri}/{CHECKPOINTS}/{path.name}")
        self.store.prune(f"{self.uri}/{CHECKPOINTS}", keep)
        log.info("uploaded %s (%.1f MB) in %.2fs", path.name, sent / 1e6, time.monotonic() - t0)

    def pull_checkpoint(self) -> Path | None:
        """Download the bucket's newest complete checkpoint unless the local one is as new."""
        found = self.store.complete(f"{self.uri}/{CHECKPOINTS}")
        if not found:
            return None
        step, uri = found[-1]
        have = latest(self.local / CHECKPOINTS)
        if have is not None and (checkpoint_step(have.name) or 0) >= step:
            return have
        t0 = time.monotonic()
        target = self.local / CHECKPOINTS / checkpoint_name(step)
        self.store.download(uri, target)
        log.info("downloaded %s in %.2fs", uri, time.monotonic() - t0)
        return target

    def pull_result(self) -> bool:
        """True (and result.json copied here) when the stage already finished."""
        return self.store.download(f"{self.uri}/{RESULT}", self.local / RESULT)

    def pull_model(self, source: str | None) -> str | None:
        """An s3:// model inside the store: downloaded to the same place under the local
        root, with the bases of an adapter chain (which name their pod paths); else as is."""
        base = self.store.config.uri.rstrip("/")
        if not source or not source.startswith(base + "/"):
            return source
        local = self.root / source[len(base) + 1 :]
        if not (local / COMPLETE).is_file() and not self.store.download(source, local):
            raise ValueError(f"{source}: not found in the object store (did its stage run?)")
        path = str(local)
        while models.is_adapter_dir(path):
            parent = Path(models.adapter_base(path))
            inside = parent.is_absolute() and parent.is_relative_to(self.root)
            if not inside or parent.exists():
                break
            self.store.download(f"{base}/{parent.relative_to(self.root)}", parent)
            path = str(parent)
        return str(local)

    def push_logs(self) -> None:
        for name in (PROGRESS, METRICS):
            if (self.local / name).is_file():
                self.store.upload_file(self.local / name, f"{self.uri}/{name}")

    def push_outputs(self) -> None:
        """final/ and merged/ (their markers last), progress and metrics; result.json comes
        after these, from `push_result`."""
        for name in (FINAL, MERGED):
            if (self.local / name).is_dir():
                self.store.upload_dir(self.local / name, f"{self.uri}/{name}")
        self.push_logs()

    def push_result(self) -> None:
        self.store.upload_file(self.local / RESULT, f"{self.uri}/{RESULT}")
