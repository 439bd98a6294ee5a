"""The training loop Ray Train runs on every worker (the "worker"), and its callbacks.

    engine.run(cfg)  ->  TorchTrainer(train_worker, {"cfg": json, "queue": q})  ->  here:
    tokenizer, stage.load_model (+PEFT), prepared datasets -> stage.build(ctx) -> HF/TRL Trainer
    -> atomic checkpoints + ReportCallback (+ EarlyStopping) -> train(resume) -> stage.save

The stage module (stages.Stage) decides what is trained and how; this loop adds what every
stage gets: arguments.training_kwargs, the adapter, atomic checkpoints and resume
(checkpoint.py), the driver's stop request (StopCallback) and metrics (ReportCallback).

Ray's `prepare_trainer` wraps every trainer (it matters only for Ray Data inputs). Ray's
`RayTrainReportCallback` is not used: it copies every checkpoint into Ray's storage, while
ours already live, complete and atomically renamed, in the stage directory (checkpoint.py),
and metrics go to the driver through `ReportCallback` (metrics.py explains why).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmtrain.trainer import adapters, arguments, checkpoint, models, stages
from llmtrain.trainer.contract import FINAL, PREPARED, STOP_FILE, StageConfig
from llmtrain.trainer.stages import StageContext

log = logging.getLogger(__name__)


class ReportCallback(TrainerCallback):
    """Sends log/eval/save events to the driver's queue (see metrics.py)."""

    def __init__(self, queue: Any, rank: int) -> None:
        self.queue, self.rank = queue, rank

    def _put(self, record: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(record)
        except Exception:  # metrics must never stop training
            log.debug("could not report %s", record.get("kind"), exc_info=True)

    def _base(self, args: Any, state: Any, kind: str) -> dict[str, Any]:
        world = max(1, args.world_size)
        samples = state.global_step * args.per_device_train_batch_size * world
        return {
            "kind": kind,
            "time": time.time(),
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": state.epoch or 0.0,
            "num_input_tokens_seen": state.num_input_tokens_seen,
            "samples_seen": samples * args.gradient_accumulation_steps,
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            self._put(self._base(args, state, "begin"))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        import torch

        if torch.cuda.is_available():
            self._put({"kind": "gpu", "rank": self.rank, "bytes": torch.cuda.memory_allocated()})
        if state.is_world_process_zero:
            numbers = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            self._put({**numbers, **self._base(args, state, "log")})

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            self._put({"kind": "checkpoint", "step": state.global_step})


class StopCallback(TrainerCallback):
    """Save a checkpoint and stop when the driver asks (it got SIGTERM/SIGINT).

    The driver creates `{stage}/.stop`; every rank looks for it after each step and the ranks
    agree with an all-reduce, so all of them stop at the same step (a rank leaving alone
    would hang the others' collectives).
    """

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([float(self.stop_file.exists())], device=args.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            log.warning("stop requested: saving checkpoint-%d, then stopping", state.global_step)
            self.stopped = control.should_save = control.should_training_stop = True


def _rank_world(config: dict[str, Any]) -> tuple[int, int]:
    if config.get("in_process"):
        return 0, 1
    import ray.train

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def train_worker(config: dict[str, Any]) -> Any:
    """Ray Train's train_loop_per_worker: build, train (resuming), save; returns the trainer.

    `config`: {"cfg": StageConfig JSON, "queue": anything with put_nowait(dict)}. With
    "in_process": True it runs as a single process outside Ray (tests, debugging) after
    engine.prepare_data has written {stage}/prepared/.
    """
    import datasets
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = StageConfig.model_validate_json(config["cfg"])
    rank, world = _rank_world(config)
    stage = stages.load(cfg.stage.type)
    out = Path(cfg.output_dir)
    prepared = out / PREPARED
    train = datasets.load_from_disk(str(prepared / "train"))
    has_eval = (prepared / "eval").exists()
    evaluation = datasets.load_from_disk(str(prepared / "eval")) if has_eval else None
    kwargs = arguments.training_kwargs(cfg, evaluation is not None)
    # ZeRO-3 partitions weights while loading only if DeepSpeed's config is alive by then.
    keepalive = None
    if kwargs["deepspeed"] and not config.get("in_process"):
        import deepspeed

        # Wraps the process group Ray Train made; on CPUs accelerate would not (use_cpu).
        deepspeed.init_distributed(dist_backend="nccl" if models.cuda_available() else "gloo")
        if cfg.distributed.zero_stage == 3:
            keepalive = TrainingArguments(**kwargs)
    tokenizer = models.load_tokenizer(cfg)
    # Before any weights exist: a model built from scratch, LoRA's A matrices and heads are
    # initialised the same on every rank and in every attempt (the Trainer seeds only later).
    set_seed(cfg.stage.hyperparameters.seed)
    task = stage.PEFT_TASK_TYPE
    ctx = StageContext(
        cfg, tokenizer, None, train, evaluation, kwargs,
        adapters.lora_config(cfg.stage.peft, task), rank, world, out,
    )  # fmt: skip
    ctx.model = stage.load_model(ctx)
    if stage.APPLY_PEFT:
        hp = cfg.stage.hyperparameters
        ctx.model = adapters.apply(ctx.model, cfg.stage.peft, task, hp.gradient_checkpointing)
    del keepalive
    trainer = stage.build(ctx)
    trainer.add_callback(ReportCallback(config["queue"], rank))
    stop = StopCallback(out / STOP_FILE)
    trainer.add_callback(stop)
    patience = cfg.stage.hyperparameters.early_stopping_patience
    if patience and evaluation is not None:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=patience))
    mirror = checkpoint.Mirror.of(cfg)  # rank 0 uploads each checkpoint to the bucket
    trainer = prepare_trainer(checkpoint.make_atomic(trainer, cfg.checkpointing.keep, mirror))
    resume = checkpoint.latest(kwargs["output_dir"])
    if resume is not None:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if mirror is not None:
        mirror.wait()  # the last checkpoint is in the bucket before the stage goes on or stops
    if stop.stopped:  # interrupted: the checkpoint is the output; final/ comes when resumed
        return trainer
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    final_eval = evals[-1] if evals and evals[-1]["step"] == trainer.state.global_step else {}
    if evaluation is not None and not final_eval:
        final_eval = trainer.evaluate()
    saved = stage.save(ctx, trainer)
    if rank == 0:
        saved["probe_metrics"] = _probes(cfg)
        _report_end(config["queue"], trainer, output, final_eval, saved, resume)
    return trainer


def _probes(cfg: StageConfig) -> dict[str, float]:
    """The job's probes on the saved final model (evaluate.after_stage), run here where torch
    and the model's code are imported already: the driver would spend seconds importing them.
    On the CPU, like the driver did, so the training's GPU memory is not touched."""
    if cfg.probes is None or not cfg.probes.after_every_stage:
        return {}
    from llmtrain.trainer import evaluate

    model, tok = evaluate.load(str(Path(cfg.output_dir) / FINAL))
    metrics = evaluate.probe_metrics(model, tok, cfg)
    del model
    return metrics


def _report_end(queue: Any, trainer: Any, output: Any, final_eval: dict[str, Any],
                saved: dict[str, Any], resume: Path | None) -> None:  # fmt: skip
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    runtime = output.metrics.get("train_runtime") or 0.0
    seen = trainer.state.num_input_tokens_seen
    tokens = seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    record = {
        "kind": "end",
        "steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "best_loss": min(losses) if losses else None,  # same series as final_loss
        "best_eval_loss": min(evals) if evals else None,
        "eval_loss": final_eval.get("eval_loss"),
        "train_loss": output.training_loss,
        "train_runtime": runtime,
        "tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_second": tokens / runtime if runtime else None,
        "trainable_parameters": adapters.trainable_parameters(trainer.model),
        "quantized_modules": adapters.quantized_modules(trainer.model),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "resumed_from": str(resume) if resume else None,
        "pid": os.getpid(),
        **saved,
    }
    ReportCallback(queue, 0)._put(record)
