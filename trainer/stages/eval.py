"""Eval stage: no training. The driver (rank 0) measures the input model and writes eval.json.

    engine.run(cfg)   # sees run_in_driver and calls it instead of starting Ray Train

The metric follows the dataset's format (text: perplexity, prompt-completion: exactMatch or
regexMatch through lm-evaluation-harness, preference: preferenceAccuracy), plus
`eval.tasks` (lm_eval, `tasks.<task>.<metric>`) and the job's probes (`probes.passRate`);
evaluate.py has the measurements. The Stage functions exist for the shape: Ray Train never
runs this stage, so `build` refuses.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llmtrain.trainer import data, evaluate
from llmtrain.trainer.stages import common

if TYPE_CHECKING:
    from llmtrain.trainer.contract import StageConfig
    from llmtrain.trainer.stages import StageContext

PEFT_TASK_TYPE = "CAUSAL_LM"
APPLY_PEFT = False


def run_in_driver(cfg: StageConfig) -> dict[str, Any]:
    """result.json's content: the metrics (also in eval.json) and no new model."""
    return {
        "output": cfg.input_model,
        "steps": 0,
        "metrics": evaluate.eval_stage(cfg),
        "finished_at": time.time(),
    }


def prepare_data(cfg: StageConfig, tokenizer: Any) -> tuple[Any, Any | None, data.Report]:
    """The rows evaluated, whole (nothing is held out: all of it is evaluation data)."""
    spec = cfg.stage.dataset.model_copy(update={"eval_fraction": 0.0, "eval_split": None})
    rows, _, report = data.load_splits(spec, cfg.stage.hyperparameters.seed)
    return common.logical(rows, spec), None, report


def load_model(ctx: StageContext) -> Any:
    return common.load_causal_lm(ctx)


def build(ctx: StageContext) -> Any:
    raise ValueError(f"stage {ctx.cfg.stage.name}: eval stages run in the driver, not Ray Train")


def save(ctx: StageContext, trainer: Any) -> dict[str, Any]:
    return {}
