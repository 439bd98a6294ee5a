"""llmtrain.trainer.contract without torch: stage directory names, progress from a scrape,
path localisation, and the stage rules of llmtrain.trainer.config."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from llmtrain.trainer import contract
from llmtrain.trainer.config import STAGE_FORMATS, STAGE_RULES, StageSpec, stage_problems
from llmtrain.trainer.contract import Progress, StageConfig


def test_importing_the_contract_loads_no_training_or_metrics_library() -> None:
    code = (
        "import sys, llmtrain.trainer.contract, llmtrain.trainer.config;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'torch', 'ray', 'transformers', 'prometheus_client', 'kopf', 'kubernetes'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_stage_directory_names() -> None:
    assert contract.stage_dir("/storage/", "job", "sft") == "/storage/job/sft"
    assert contract.final_model_dir("/storage", "job", "sft") == "/storage/job/sft/final"
    assert contract.checkpoint_dir("/storage/job/sft", 40) == (
        "/storage/job/sft/checkpoints/checkpoint-40"
    )
    assert contract.checkpoint_step("checkpoint-40") == 40
    assert contract.checkpoint_step("checkpoint-4x") is None
    assert contract.checkpoint_step(contract.STAGING) is None


def test_progress_from_a_scrape_keeps_what_the_scrape_lacks() -> None:
    # Every Progress field is fed by exactly one metric.
    assert sorted(contract.PROGRESS_METRICS.values()) == sorted(Progress.model_fields)
    before = Progress(step=3, total_steps=400, loss=2.0, eval_loss=2.5)
    scraped = {"llmtrain_train_step": 10.0, "llmtrain_train_loss": 1.5, "llmtrain_kl": 0.1}
    now = Progress.from_metrics(scraped, before)
    assert now == Progress(step=10, total_steps=400, loss=1.5, eval_loss=2.5)
    assert isinstance(now.step, int)
    assert Progress.from_metrics({}) == Progress()
    # camelCase in the job status, as every status field
    assert "totalSteps" in now.model_dump(by_alias=True)


def test_driver_metrics_follow_the_naming_conventions() -> None:
    names = [m.name for m in contract.DRIVER_METRICS]
    assert len(names) == len(set(names)) and all(n.startswith("llmtrain_") for n in names)
    for m in contract.DRIVER_METRICS:
        assert m.type in ("gauge", "counter")
        assert (m.type == "counter") == m.name.endswith("_total"), m.name
        assert m.help.endswith("."), m.name


def config(**stage: object) -> StageConfig:
    spec = {"name": "s", "type": "sft", "dataset": {"source": "data.jsonl", "format": "text"}}
    return StageConfig.model_validate(
        {
            "job": "j",
            "stage": {**spec, **stage},
            "model": {"source": "model"},
            "input_model": "model",
            "output_dir": "out",
        }  # fmt: skip
    )


def test_localise_makes_existing_relative_paths_absolute(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text("{}\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "rm").mkdir()
    cfg = config(
        type="ppo",
        dataset={"source": "data.jsonl", "format": "prompt-only"},
        inputModel={"path": "model"},
        ppo={"rewardModel": {"path": "rm"}},
    )
    cfg.reward_model = "rm"
    cfg.model.tokenizer.source = "org/hub-tokenizer"  # a hub id: stays as it is
    out = contract.localise(cfg, tmp_path)
    assert out.stage.dataset.source == str(tmp_path / "data.jsonl")
    assert out.input_model == out.model.source == str(tmp_path / "model")
    assert out.stage.input_model and out.stage.input_model.path == str(tmp_path / "model")
    assert out.stage.ppo and out.stage.ppo.reward_model.path == str(tmp_path / "rm")
    assert out.reward_model == str(tmp_path / "rm")
    assert out.model.tokenizer.source == "org/hub-tokenizer"
    assert out.output_dir == str(tmp_path / "out")  # made absolute even before it exists
    assert cfg.stage.dataset.source == "data.jsonl"  # a copy: the original is unchanged
    uri = config(dataset={"source": "s3://bucket/data.jsonl", "format": "text"})
    assert contract.localise(uri, tmp_path).stage.dataset.source == "s3://bucket/data.jsonl"


def test_read_and_write_json(tmp_path: Path) -> None:
    path = tmp_path / contract.PROGRESS
    assert contract.read_json(path) == {}
    contract.write_json(path, {"step": 1, "loss": math.inf})
    assert contract.read_json(path) == {"step": 1, "loss": math.inf}
    assert [p.name for p in tmp_path.iterdir()] == [contract.PROGRESS]
    path.write_text("[1, 2]")
    assert contract.read_json(path) == {}


def spec(**fields: object) -> StageSpec:
    return StageSpec.model_validate(
        {"name": "s", "dataset": {"source": "d", "format": "text"}, **fields}
    )


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        ({"type": "pretrain"}, []),
        ({"type": "sft", "dataset": {"source": "d", "format": "messages"}}, []),
        (
            {"type": "sft", "dataset": {"source": "d", "format": "preference"}},
            [("dataset.format", "sft stages need prompt-completion or messages or text data, "
                                "not preference")],
        ),
        (
            {"type": "ppo", "dataset": {"source": "d", "format": "prompt-only"}},
            [("ppo", "required for ppo stages (ppo.rewardModel)")],
        ),
        (
            {"type": "grpo", "dataset": {"source": "d", "format": "prompt-only"}, "grpo": {}},
            [("grpo", "needs rewardModel or rewardFunctions")],
        ),
        (
            {"type": "pretrain", "dpo": {}},
            [("dpo", "only allowed when type is dpo")],
        ),
    ],
)  # fmt: skip
def test_stage_rules(fields: dict[str, object], problems: list[tuple[str, str]]) -> None:
    assert stage_problems(spec(**fields)) == problems


def test_stage_rules_are_the_formats_table() -> None:
    assert STAGE_FORMATS == {t: r.formats for t, r in STAGE_RULES.items()}
    assert {t for t, r in STAGE_RULES.items() if r.from_model} == {
        "reward",
        "dpo",
        "ppo",
        "grpo",
        "eval",
    }
