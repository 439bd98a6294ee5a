"""The LLMTrainingJob models: examples parse, bad specs get every problem with its path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from llmtrain.operator import api

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL = {
    "apiVersion": "llmtrain.io/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {"name": "tiny"},
    "spec": {
        "model": {"source": "org/model"},
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset": {"source": "d.jsonl", "format": "prompt-completion"},
            }
        ],
    },
}


def job(**spec_changes):
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(spec_changes)
    return doc


def paths(doc) -> list[str]:
    return [p.path for p in api.validate_job(doc)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        parsed = api.parse_job(doc)
        assert parsed.spec.stages


def test_examples_cover_the_promised_shapes() -> None:
    jobs = {p.stem: api.parse_job(yaml.safe_load(p.read_text())) for p in EXAMPLES}
    assert jobs["quickstart"].spec.resources.gpus_per_worker == 0
    assert any(st.peft.method == "qlora" for j in jobs.values() for st in j.spec.stages), (
        "a QLoRA example"
    )
    assert any(
        [s.type for s in j.spec.stages] == ["pretrain", "sft", "dpo"] for j in jobs.values()
    ), "a pretrain -> sft -> dpo pipeline"


def test_minimal_job_gets_defaults() -> None:
    parsed = api.parse_job(MINIMAL)
    stage = parsed.spec.stages[0]
    assert stage.peft.method == "none"
    assert stage.hyperparameters.learning_rate == 2e-5
    assert parsed.spec.run_policy.backoff_limit == 3
    assert parsed.spec.model.trust_remote_code is False


def test_reports_every_structural_problem_with_field_paths() -> None:
    doc = job()
    doc["metadata"]["name"] = "Not_A_DNS_Label"
    st = doc["spec"]["stages"][0]
    st["peft"] = {"method": "lora", "r": 0}
    st["hyperparameters"] = {"learningRate": -1, "batchSize": "many"}
    st["typo"] = True
    doc["spec"]["resources"] = {"cpu": [1]}
    problems = {p.path: p.message for p in api.validate_job(doc)}
    assert problems == {
        "metadata.name": "must match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        "spec.stages[0].peft.r": "must be greater than 0",
        "spec.stages[0].hyperparameters.learningRate": "must be greater than 0",
        "spec.stages[0].hyperparameters.batchSize": (
            "must be integer, unable to parse string as an integer"
        ),
        "spec.stages[0].typo": "unknown field",
        "spec.resources.cpu": "must be an integer or a string",
    }


def test_reports_every_cross_field_problem() -> None:
    ds = {"source": "p.jsonl", "format": "preference"}
    doc = job(
        stages=[
            {"name": "a", "type": "sft", "dataset": {"source": "x", "format": "prompt-completion"}},
            {"name": "a", "type": "dpo", "dataset": ds, "ppo": {"rewardModel": {"path": "/m"}}},
            {
                "name": "p",
                "type": "ppo",
                "dataset": {"source": "q", "format": "prompt-only"},
                "ppo": {"rewardModel": {"fromStage": "a"}},
            },
            {
                "name": "g",
                "type": "grpo",
                "dataset": {"source": "q", "format": "text"},
                "inputModel": {"fromStage": "later"},
            },
        ]
    )
    assert paths(doc) == [
        "spec.stages[1].name",
        "spec.stages[1].ppo",
        "spec.stages[2].ppo.rewardModel.fromStage",
        "spec.stages[3].inputModel.fromStage",
        "spec.stages[3].grpo",
        "spec.stages[3].dataset.format",
    ]


def test_structural_and_cross_field_problems_are_reported_together() -> None:
    doc = job(
        stages=[
            {
                "name": "rm",
                "type": "reward",
                "dataset": {"source": "p", "format": "preference"},
                "peft": {"method": "lora", "r": 0},
            },  # structural: this stage does not parse
            {"name": "d", "type": "dpo", "dataset": {"source": "x", "format": "text"}},
            {
                "name": "p",
                "type": "ppo",
                "dataset": {"source": "q", "format": "prompt-only"},
                "ppo": {"rewardModel": {"fromStage": "rm"}},
            },  # fine: rm is a reward stage
        ]
    )
    doc["metadata"]["name"] = "Bad_Name"
    assert paths(doc) == [
        "metadata.name",
        "spec.stages[0].peft.r",
        "spec.stages[1].dataset.format",  # found although the document does not parse
    ]


def test_first_stage_needs_a_model() -> None:
    assert paths(job(model={})) == ["spec.model"]
    assert paths(job(model={"architecture": {"model_type": "llama"}})) == []


def test_not_a_mapping() -> None:
    assert [str(p) for p in api.validate_job(["a"])] == [
        "(document): must be a mapping (an LLMTrainingJob object)"
    ]


def test_secrets_are_references_only() -> None:
    assert paths(job(model={"source": "m", "hubToken": "hf_secret"})) == ["spec.model.hubToken"]
    ok = job(model={"source": "m", "hubToken": {"name": "hf", "key": "token"}})
    assert paths(ok) == []


def test_every_field_has_a_description() -> None:
    missing, seen = [], []

    def walk(model: type, where: str) -> None:
        seen.append(model.__name__)
        for name, field in model.model_fields.items():
            if not field.description and model is not api.LLMTrainingJob:
                missing.append(f"{where}.{name}")
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                inner = getattr(arg, "__args__", (arg,))
                for t in inner:
                    if isinstance(t, type) and issubclass(t, api.Model):
                        walk(t, t.__name__)

    walk(api.LLMTrainingJob, "LLMTrainingJob")
    assert missing == []
    assert {"StageSpec", "Hyperparameters", "PeftSpec", "StageStatus", "Progress"} <= set(seen)
