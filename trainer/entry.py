"""The stage entry point: what `llmtrain worker` and `llmtrain generate` run (the CLI wraps them).

    llmtrain worker --stage-config /etc/llmtrain/stage.json      # entry.run_stage(path)
    llmtrain generate --model runs/quickstart/sft/final "question: what is 2 plus 3?"

`llmtrain worker` is the stage's driver (the rank 0 pod), which starts the Ray Train workers
(engine.py) that run loop.py. Both functions return the problems to print, one line each, so
the CLI stays a thin wrapper: a bad config, bad data or a failed worker gives a non-zero exit
(contract.ExitCode) and a one-line reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmtrain.trainer.contract import ENV_RAY_ADDRESS, TERMINATION_LOG, ExitCode, StageConfig

log = logging.getLogger("llmtrain")


def _setup_logging() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_config(path: Path) -> StageConfig:
    return StageConfig.model_validate_json(path.read_text())


def run_stage(path: Path) -> tuple[int, list[str]]:
    """Run the stage in `path`: (0, []) on success, else (exit code, problems). The code
    follows contract.ExitCode: PERMANENT for the job's own mistakes, RETRYABLE for lost
    workers, 128+n after a signal (the checkpoint was saved)."""
    _setup_logging()
    try:
        cfg = load_config(path)
    except OSError as e:
        return ExitCode.PERMANENT, [f"{path}: cannot read: {e.strerror}"]
    except ValidationError as e:
        return ExitCode.PERMANENT, [
            f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        ]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.environ.get(ENV_RAY_ADDRESS):
        # A one-machine Ray must stay on loopback; Ray binds the host's address otherwise.
        # Read when ray is first imported, so set it before that.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from llmtrain.trainer import engine
    from llmtrain.trainer.data import DataError

    try:
        result = engine.run(cfg)
    except engine.StageInterrupted as e:
        return 128 + e.signum, [str(e)]
    except engine.StageError as e:
        log.debug("stage failed", exc_info=True)
        return ExitCode.PERMANENT if e.permanent else ExitCode.RETRYABLE, [str(e)]
    except (DataError, ValueError) as e:  # found by the driver, before any worker started
        log.debug("stage failed", exc_info=True)
        return ExitCode.PERMANENT, [str(e)]
    _termination_message(result.get("metrics") or {})
    return ExitCode.SUCCEEDED, []


def termination_message(metrics: dict[str, Any]) -> str:
    """What the driver leaves for the operator: the stage's result metrics as JSON, within
    the 4 KiB the kubelet keeps (gates name at most 16 metrics; the losses come first)."""
    items = list(metrics.items())
    while True:
        text = json.dumps({"metrics": dict(items)}, separators=(",", ":"))
        if len(text) <= 4096 or not items:
            return text
        items.pop()


def _termination_message(metrics: dict[str, Any]) -> None:
    path = Path(TERMINATION_LOG)
    if not path.exists():
        return  # not in a pod: the kubelet mounts this file into every container
    try:
        path.write_text(termination_message(metrics))
    except OSError as e:
        log.warning("cannot write %s: %s", path, e)


def generate(model: str, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0) -> str:
    """Complete `prompt` with a full model or adapter dir (greedy when temperature is 0)."""
    import torch
    from transformers import AutoTokenizer

    from llmtrain.trainer import models

    tok = AutoTokenizer.from_pretrained(models.tokenizer_dir(model))
    lm = models.load_pretrained(model)
    lm.eval()
    inputs = tok(prompt, return_tensors="pt")
    sample: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature else {}
    with torch.no_grad():
        out = lm.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            **sample,
        )
    return str(tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


def generate_cli(
    model: str, prompt: str, max_new_tokens: int, temperature: float
) -> tuple[str, list[str]]:
    """`llmtrain generate`: (completion, []) on success, else ("", problems)."""
    if not Path(model).exists() and model.startswith(("/", ".")):
        return "", [f"{model}: no such model directory"]
    try:
        return generate(model, prompt, max_new_tokens, temperature), []
    except (OSError, ValueError) as e:
        return "", [f"{model}: {e}"]
