"""sft -> reward -> ppo with the model hand-off of resolve_stages; ppo on Ray Train.

The SFT stage trains a LoRA adapter, so the reward stage loads an adapter directory under a new
sequence-classification head (and trains it in full) and the ppo stage loads it as a causal LM
again; the reward model reaches ppo only through StageConfig.reward_model. sft and reward run
in-process (the worker loop without Ray: a Ray Train start costs 30-60 s on 2 busy cores); ppo
runs through engine.run on Ray Train, whose /metrics and progress.json must carry the
alignment metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtrain.trainer.config import CheckpointSpec, DistributedSpec, ModelSpec, StageSpec
from llmtrain.trainer.contract import resolve_stages

from ._alignment import PREFERENCE_COLUMNS, history, run, write_preferences, write_prompts
from .helpers import Assets, Scraper, free_port

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def sample(page: str, metric: str) -> float:
    lines = [ln for ln in page.splitlines() if ln.startswith(metric + "{")]
    assert lines, f"{metric} not on the metrics page"
    return float(lines[0].rsplit(" ", 1)[1])


def test_sft_reward_ppo_pipeline(assets: Assets, ray_cluster: str, tmp_path: Path) -> None:
    from llmtrain.trainer import engine

    hp = {"maxSeqLength": 64, "batchSize": 8, "loggingSteps": 2, "scheduler": "constant"}
    stages = [
        StageSpec.model_validate({
            "name": "sft", "type": "sft",
            "dataset": {"source": str(assets.instructions), "format": "prompt-completion"},
            "peft": {"method": "lora", "r": 8, "alpha": 16},
            "hyperparameters": {**hp, "learningRate": 3e-3, "maxSteps": 4},
        }),
        StageSpec.model_validate({
            "name": "reward", "type": "reward",
            "dataset": {"source": str(write_preferences(tmp_path / "prefs.jsonl")),
                        "format": "preference", "columns": PREFERENCE_COLUMNS, "evalFraction": 0},
            "hyperparameters": {**hp, "learningRate": 1e-3, "maxSteps": 12},
        }),
        StageSpec.model_validate({
            "name": "ppo", "type": "ppo",
            "inputModel": {"fromStage": "sft"},
            "dataset": {"source": str(write_prompts(tmp_path / "prompts.jsonl")),
                        "format": "prompt-only"},
            "hyperparameters": {**hp, "learningRate": 1e-2, "maxSteps": 8, "batchSize": 16},
            "ppo": {"rewardModel": {"fromStage": "reward"}, "responseLength": 8,
                    "temperature": 1.0, "miniBatchSize": 8, "ppoEpochs": 2},
        }),
    ]  # fmt: skip
    configs = resolve_stages(
        job="align",
        namespace="tests",
        model=ModelSpec(source=str(assets.model), dtype="float32"),
        stages=stages,
        storage_root=str(tmp_path / "runs"),
        workers=1,
        distributed=DistributedSpec(),
        checkpointing=CheckpointSpec(every_steps=4),
        metrics_port=None,
    )
    sft, reward, ppo = configs
    final = {c.stage.name: str(Path(c.output_dir) / "final") for c in configs}
    assert reward.input_model == final["sft"] and reward.reward_model is None
    assert ppo.input_model == final["sft"] and ppo.reward_model == final["reward"]

    run(sft)
    assert (Path(final["sft"]) / "adapter_config.json").is_file()
    rm = run(reward)
    assert history(rm, "accuracy")[-1] > 0.9
    saved = json.loads((Path(final["reward"]) / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]

    port = free_port()
    scraper = Scraper(port)
    try:
        result = engine.run(ppo.model_copy(update={"metrics_port": port}))
    finally:
        scraper.stop()
    assert result["steps"] == 8 and Path(result["output"]).is_dir()
    progress = json.loads((Path(ppo.output_dir) / "progress.json").read_text())
    assert {"reward_mean", "reward_std", "kl", "generation_seconds", "update_seconds"} <= (
        progress.keys()
    )
    page = scraper.page
    assert page, "no /metrics page with a step > 0 was scraped"
    for metric in ("llmtrain_reward_mean", "llmtrain_reward_std", "llmtrain_kl"):
        sample(page, metric)
    assert sample(page, "llmtrain_generation_seconds_total") > 0
    assert sample(page, "llmtrain_update_seconds_total") > 0
