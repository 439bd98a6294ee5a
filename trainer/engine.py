"""Run one stage on Ray Train: the driver side of `llmtrain worker --stage-config FILE`.

    from llmtrain.trainer import engine
    result = engine.run(StageConfig.model_validate_json(Path("stage.json").read_text()))

What `run` does, in the driver process:
1. returns at once if `{stage}/result.json` exists (the stage already succeeded: a retried pod
   must not train twice); checks what the stage type needs (config.STAGE_RULES); deletes
   half-written checkpoints (checkpoint.clean);
2. prepares the data once (stage module's `prepare_data`), logs kept/dropped counts, and saves
   it to `{stage}/prepared/` (reused while the data config is unchanged);
3. joins Ray at `RAY_ADDRESS` (a cluster's, or the local runner's one-machine Ray when
   LLMTRAIN_LOCAL_RAY=1), or starts a local Ray;
4. serves /metrics and writes progress.json / metrics.jsonl (metrics.Monitor, fed by a queue);
5. runs `loop.train_worker` on `cfg.workers` Ray Train workers with `TorchTrainer`: gloo on CPUs,
   nccl on GPUs; each worker resumes from the newest complete checkpoint by itself;
6. writes `result.json` last.

Storage must be shared by all workers (a PVC on a cluster): checkpoints and final/ are written
by the workers' rank 0 (and by every rank for DeepSpeed shards), prepared data read by all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmtrain.trainer import checkpoint, prepared, ray_setup, stages
from llmtrain.trainer.config import STAGE_RULES, StageType, stage_problems
from llmtrain.trainer.contract import (
    CHECKPOINTS,
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    ENV_AWS_SESSION_TOKEN,
    ENV_HF_TOKEN,
    ENV_RAY_ADDRESS,
    FINAL,
    RESULT,
    STOP_FILE,
    StageConfig,
    localise,
    read_json,
    write_json,
)
from llmtrain.trainer.metrics import Monitor

log = logging.getLogger(__name__)
ENV_AWS = (ENV_AWS_ACCESS_KEY_ID, ENV_AWS_SECRET_ACCESS_KEY, ENV_AWS_SESSION_TOKEN)


class StageError(RuntimeError):
    """The stage failed; the message says where (driver data checks or a worker).

    `permanent`: the job's own mistake (bad data or config, a ValueError in a worker), which a
    retry would repeat; otherwise infrastructure (a worker died), retried from the checkpoint.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class StageInterrupted(StageError):
    """SIGTERM/SIGINT: the workers saved a checkpoint and stopped; run again to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals(stop_file: Path) -> Iterator[list[int]]:
    """On SIGTERM/SIGINT create `stop_file`: the workers checkpoint and stop (loop.py)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, _frame: Any) -> None:
        if not received:
            log.warning("%s: saving a checkpoint, then stopping", signal.Signals(signum).name)
            stop_file.touch()
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def connect() -> None:
    """Join the Ray cluster at RAY_ADDRESS, or start a local one (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get(ENV_RAY_ADDRESS)
    runtime_env = {"worker_process_setup_hook": "llmtrain.trainer.ray_setup.quiet"}
    if address:
        log.info("joining %s at %s", "the local run's Ray" if _local() else "Ray", address)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        log.info("starting a local Ray instance")
        ray.init(include_dashboard=False, runtime_env=runtime_env)


def _local() -> bool:
    """RAY_ADDRESS is the local runner's one-machine Ray, not a gang spanning pods."""
    return os.environ.get(ray_setup.ENV_LOCAL_HEAD) == "1"


def _worker_env(use_gpu: bool) -> dict[str, str]:
    env = {
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every printed log line shows up twice
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator, gloo collectives
    names = (ENV_HF_TOKEN, "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", *ENV_AWS)
    for name in names:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def run(cfg: StageConfig) -> dict[str, Any]:
    """Run the stage to completion; return (and write) result.json's content."""
    import ray
    from ray.util.queue import Queue

    cfg = localise(cfg)  # Ray workers run in another working directory
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mirror = checkpoint.Mirror.of(cfg)  # the object store's copy of `out`, if any
    if mirror is not None:
        mirror.store.check()  # wrong credentials: a permanent error naming the bucket, now
        mirror.pull_result()
    if (out / RESULT).exists():
        log.info("stage %s already finished: %s", cfg.stage.name, out / RESULT)
        return read_json(out / RESULT)
    problems = _problems(cfg)
    if problems:
        raise StageError(f"stage {cfg.stage.name}: {'; '.join(problems)}", permanent=True)
    stage = stages.load(cfg.stage.type)
    if hasattr(stage, "run_in_driver"):  # eval: no training, no Ray (stages/eval.py)
        result = stage.run_in_driver(cfg)
        write_json(out / RESULT, result)
        return dict(result)
    removed = checkpoint.clean(out / CHECKPOINTS)
    if removed:
        log.warning("removed incomplete checkpoints: %s", ", ".join(p.name for p in removed))
    if mirror is not None:
        mirror.pull_checkpoint()
        cfg.input_model = mirror.pull_model(cfg.input_model)
        cfg.reward_model = mirror.pull_model(cfg.reward_model)
    resume = checkpoint.latest(out / CHECKPOINTS)
    log.info("stage %s (%s): %s", cfg.stage.name, cfg.stage.type,
             f"resuming from {resume.name}" if resume else "starting")  # fmt: skip
    data_report = prepared.prepare(cfg, stage, out)

    connect()
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    use_gpu = resources.get("GPU", 0) > 0
    # Share the CPUs out (torch's thread count follows them); fractions when workers > CPUs,
    # so a local run with more workers than cores starts instead of waiting forever.
    cpus = resources.get("CPU", 1.0)
    per_worker: dict[str, float] = {"CPU": max(1, int(cpus // cfg.workers))}
    # Not when joining a cluster: its other pods may not have joined yet, and a whole CPU per
    # worker makes Ray Train wait for them instead of crowding every worker onto the head.
    # The local run's own Ray (`llmtrain run`, ray_setup.local_head) is this machine: local.
    if cpus < cfg.workers and (_local() or not os.environ.get(ENV_RAY_ADDRESS)):
        per_worker["CPU"] = cpus / cfg.workers
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    # Ray Train extras a stage does not use, each one more actor process to start: the
    # preemption watcher serves Ray-level restarts (we run max_failures=0; the operator retries
    # the stage), and Ray Train metrics need Ray's dashboard (ours go to /metrics).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
    stop_file = out / STOP_FILE
    stop_file.unlink(missing_ok=True)
    queue = Queue(actor_options={"num_cpus": 0})
    monitor = Monitor(cfg, out, queue)
    monitor.start()
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(_stop_on_signals(stop_file))
        if mirror is not None:  # progress and metrics reach the bucket however the stage ends
            stack.callback(_push_logs, mirror)
        stack.callback(queue.shutdown)
        stack.callback(monitor.stop)
        outcome = _fit(cfg, out, queue, use_gpu, per_worker)
    if getattr(outcome, "error", None):
        raise _failed(cfg, outcome.error)
    stop_file.unlink(missing_ok=True)
    if signals and not monitor.result:  # a signal after the workers finished changes nothing
        raise StageInterrupted(
            f"stage {cfg.stage.name} stopped by {signal.Signals(signals[0]).name} at step "
            f"{monitor.progress['step']}; checkpoint saved, run again to resume",
            signals[0],
        )
    # The workers' end record carries the stage's numbers (loop._report_end: final and best
    # loss from the whole log history); the driver's view stands in if that record was lost.
    result = {
        "output": str(out / FINAL),
        "steps": monitor.progress["step"],
        "final_loss": monitor.progress["loss"],
        "best_loss": None,
        **{k: v for k, v in monitor.result.items() if k not in ("time", "pid")},
        "workers": cfg.workers,
        "data": {k: v for k, v in data_report.items() if k != "key"},
        "finished_at": time.time(),
    }
    from llmtrain.trainer import evaluate  # the gates' metrics: losses, probes

    result["metrics"] = evaluate.after_stage(cfg, result)
    result.pop("probe_metrics", None)  # in metrics now; probes.json has the answers
    if mirror is not None:
        mirror.push_outputs()
    write_json(out / RESULT, result)
    if mirror is not None:
        mirror.push_result()  # last: a stage with result.json in the bucket is done
    log.info("stage %s done: %d steps, loss %s -> %s", cfg.stage.name, result["steps"],
             result.get("final_loss"), result["output"])  # fmt: skip
    return result


def _fit(
    cfg: StageConfig, out: Path, queue: Any, use_gpu: bool, per_worker: dict[str, float]
) -> Any:
    import ray.train
    import ray.train.torch

    # Ray resolves these to Train v2 at runtime; mypy sees the v1 stubs, hence Any.
    train: Any = ray.train
    torch_train: Any = ray.train.torch
    trainer = torch_train.TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.model_dump_json(), "queue": queue},
        scaling_config=train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        torch_config=torch_train.TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=train.RunConfig(
            name=f"{cfg.stage.name}-{int(time.time())}",
            storage_path=str(out / ".ray"),
            failure_config=train.FailureConfig(max_failures=0),  # the operator retries stages
            worker_runtime_env={"env_vars": _worker_env(use_gpu)},
        ),
    )
    try:
        return trainer.fit()
    except Exception as e:
        raise _failed(cfg, e) from e


def _push_logs(mirror: checkpoint.Mirror) -> None:
    try:
        mirror.push_logs()
    except OSError as e:  # the stage's own outcome matters more
        log.warning("could not upload progress and metrics: %s", e)


def _problems(cfg: StageConfig) -> list[str]:
    """What would make the stage fail later, found before Ray starts: a stage config file may
    come from anywhere, not only from a validated job."""
    out = [f"{field}: {message}" for field, message in stage_problems(cfg.stage)]
    if STAGE_RULES[StageType(cfg.stage.type)].from_model and not cfg.input_model:
        out.append(
            f"{cfg.stage.type} stages start from a model (an earlier stage, inputModel, or "
            "model.source)"
        )
    spec = cfg.stage.dataset
    may_eval = bool(spec.eval_split) or spec.eval_fraction > 0
    if cfg.stage.hyperparameters.early_stopping_patience and not may_eval:
        out.append("earlyStoppingPatience needs evaluation data (evalSplit or evalFraction)")
    return out


def _failed(cfg: StageConfig, error: BaseException) -> StageError:
    """A worker's failure as a StageError: permanent when the innermost error is a ValueError
    (DataError included: bad data, config or template; Ray re-raises it as a subclass of the
    original), else infrastructure (a dead actor, a lost node, NCCL), worth a retry."""
    root = _root_cause(error)
    return StageError(
        f"stage {cfg.stage.name} failed in a worker: {type(root).__name__}: {root}",
        permanent=isinstance(root, ValueError),
    )


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error of a Ray error chain: what the user needs, not Ray's wrapping."""
    seen = error
    for _ in range(10):
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    return seen


def _train_worker(config: dict[str, Any]) -> None:
    # A module-level function Ray pickles by reference; the loop imports transformers' Trainer
    # only inside the worker.
    from llmtrain.trainer.loop import train_worker

    train_worker(config)
