"""GRPO stage (TRL GRPOTrainer) with rule rewards and a reward model; the rule rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmtrain.trainer.config import RuleReward
from llmtrain.trainer.stages import rewards

from ._alignment import config, history, mean, run, write_prompts
from .helpers import Assets

pytestmark = pytest.mark.trainer


def test_exact_match_normalises_whitespace_and_reads_chat_completions() -> None:
    completions = ["  hello ann ", "hello  bob", [{"role": "assistant", "content": "hi"}], "x"]
    answers = ["hello ann", "hello bob", "hi", None]
    assert rewards.exact_match([""] * 4, completions, answer=answers) == [1.0, 1.0, 1.0, None]
    assert rewards.exact_match(["p"], ["hello"], answer=["hello!"]) == [0.0]
    with pytest.raises(ValueError, match="answer"):
        rewards.exact_match(["p"], ["hello"])


def test_format_reward_searches_the_pattern() -> None:
    fmt = rewards.format_reward(r"^<answer>\d+</answer>$")
    assert fmt(
        ["p"] * 3, ["<answer>42</answer>", "so <answer>42</answer>", "<answer>x</answer>"]
    ) == [
        1.0,
        0.0,
        0.0,
    ]
    assert rewards.format_reward("good")(["p", "p"], ["very good", "bad"]) == [1.0, 0.0]


def test_length_penalty_is_linear_beyond_the_target() -> None:
    penalty = rewards.length_penalty(4)
    ids = [[1] * 2, [1] * 4, [1] * 6, [1] * 12]
    assert penalty(["p"] * 4, ["c"] * 4, completion_ids=ids) == [0.0, 0.0, -0.5, -2.0]
    assert penalty(["p"], ["one two three four five six"]) == [-0.5]  # words without ids


def test_build_follows_the_stage_names() -> None:
    names = [RuleReward.length_penalty, "exact-match", "format"]
    funcs = rewards.build(names, format_regex="^a", target_length=2)
    assert [f.__name__ for f in funcs] == ["length_penalty", "exact_match", "format_match"]
    assert funcs[2](["p"], ["abc"]) == [1.0]


def grpo_stage(prompts: Path, max_steps: int, peft: str = "none", **grpo: Any) -> dict[str, Any]:
    return {
        "name": "grpo",
        "type": "grpo",
        "dataset": {"source": str(prompts), "format": "prompt-only"},
        "peft": {"method": peft, "r": 8, "alpha": 16},
        "hyperparameters": {
            "learningRate": 2e-2, "maxSteps": max_steps, "batchSize": 32, "loggingSteps": 1,
            "maxSeqLength": 64, "scheduler": "constant",
        },
        "grpo": {"numGenerations": 8, "maxCompletionLength": 8, "temperature": 1.0, **grpo},
    }  # fmt: skip


RULES = {
    # A completion that starts with a space-prefixed token: about 1 in 4 at first.
    "rewardFunctions": ["format", "length-penalty", "exact-match"],
    "formatRegex": "^ ",
    "targetLength": 6,
    "beta": 0.05,
}


@pytest.fixture(scope="module")
def trained(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    root = tmp_path_factory.mktemp("grpo")
    prompts = write_prompts(root / "prompts.jsonl", 64)
    cfg = config(
        assets, root / "grpo", grpo_stage(prompts, 16, **RULES), checkpointing={"everySteps": 8}
    )
    return run(cfg), root


def test_grpo_raises_the_rule_reward(trained: tuple[Any, Path]) -> None:
    trainer, _ = trained
    reward, fmt = history(trainer, "reward"), history(trainer, "rewards/format_match/mean")
    length = history(trainer, "rewards/length_penalty/mean")
    print(f"grpo: reward {mean(reward[:3]):.3f} -> {mean(reward[-3:]):.3f} (first/last 3 "
          f"steps), format {fmt[0]:.2f} -> {fmt[-1]:.2f}, length {length[0]:.2f} -> "
          f"{length[-1]:.2f}")  # fmt: skip
    assert mean(reward[-3:]) > mean(reward[:3]) + 0.2
    logged = set().union(*(h.keys() for h in trainer.state.log_history))
    # exact-match got the `answer` column (it raises without it)
    assert {"rewards/exact_match/mean", "reward_std", "kl"} <= logged
    gen, upd = history(trainer, "generation_seconds"), history(trainer, "update_seconds")
    assert gen == sorted(gen) and gen[-1] > 0 and upd[-1] > 0


def test_grpo_resumes_from_checkpoint(assets: Assets, trained: tuple[Any, Path]) -> None:
    _, root = trained
    cfg = config(
        assets,
        root / "grpo",
        grpo_stage(root / "prompts.jsonl", 18, **RULES),
        checkpointing={"everySteps": 8},
    )
    trainer = run(cfg)
    assert str(trainer.resumed_from).endswith("checkpoint-16")
    assert (trainer.first_step, trainer.state.global_step) == (16, 18)


def test_lora_grpo_with_a_reward_model(assets: Assets, trained: tuple[Any, Path]) -> None:
    """A reward model as the reward source; with LoRA the reference is the bare base."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, root = trained
    rm = root / "rm"  # an untrained scorer is enough to check the wiring
    model = AutoModelForSequenceClassification.from_pretrained(str(assets.model), num_labels=1)
    model.save_pretrained(str(rm))
    AutoTokenizer.from_pretrained(str(assets.tokenizer)).save_pretrained(str(rm))
    stage = grpo_stage(
        root / "prompts.jsonl", 2, peft="lora", beta=0.05, rewardModel={"path": str(rm)}
    )
    trainer = run(config(assets, root / "grpo-lora", stage, reward_model=str(rm)))
    assert isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    assert history(trainer, "kl")[0] == pytest.approx(0.0, abs=1e-4)
    assert [type(f).__name__ for f in trainer.reward_funcs] == ["LlamaForSequenceClassification"]
    assert (root / "grpo-lora" / "final" / "adapter_config.json").is_file()
