"""PPO: the algorithm's pieces (GAE, masks, clipped losses), the trainer on a rule reward, and
the ppo stage against a reward model from a reward stage (full and LoRA), with resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llmtrain.trainer.stages.ppo_trainer import PPOSettings, gae, ppo_losses, response_mask, whiten

from ._alignment import (
    PREFERENCE_COLUMNS,
    config,
    history,
    mean,
    run,
    write_preferences,
    write_prompts,
)
from .helpers import Assets

pytestmark = pytest.mark.trainer


def test_gae_matches_the_recursion_and_stops_at_the_mask() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 4th token is after EOS
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.1  # last real token: no bootstrap beyond EOS
    d1 = 0.0 + 0.1 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    expected = torch.tensor([[d0 + 0.5 * (d1 + 0.5 * d2), d1 + 0.5 * d2, d2, 0.0]])
    assert torch.allclose(adv, expected)
    assert torch.allclose(ret[:, :3], (expected + values)[:, :3])


def test_response_mask_keeps_tokens_up_to_the_first_eos() -> None:
    eos = 2
    response = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(response_mask(response, eos), expected)


def test_clipped_losses() -> None:
    s = PPOSettings(cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    mask = torch.ones(2, 3)
    adv = whiten(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]]), mask)
    batch = {
        "mask": mask,
        "advantages": adv,
        "logprobs": torch.full((2, 3), -1.0),
        "values": torch.zeros(2, 3),
        "returns": torch.ones(2, 3),
    }
    # On-policy (ratio 1): the policy loss is -mean(advantage) = 0 after whitening; the value
    # loss is clipped: a prediction of 1.0 counts as 0.2 away from the old value 0.
    loss, stats = ppo_losses(batch["logprobs"], torch.ones(2, 3), batch, s)
    assert stats["clipfrac"] == 0 and stats["policy_loss"] == pytest.approx(0, abs=1e-6)
    assert stats["value_loss"] == pytest.approx(0.5 * (1 - 0.2) ** 2)
    # Far off-policy: every token's ratio is clipped, and the loss gives no gradient.
    logprobs = (batch["logprobs"] + 1.0).requires_grad_()
    loss, stats = ppo_losses(logprobs, torch.zeros(2, 3), batch, s)
    assert stats["clipfrac"] == 1.0
    loss.backward()
    assert logprobs.grad is not None
    assert torch.all((logprobs.grad == 0) | (adv < 0))  # clipped upside; downside unclipped


def test_ppo_trainer_raises_a_rule_reward(assets: Assets, tmp_path: Path) -> None:
    """Reward = fraction of response tokens that start a word (the tokenizer's 'Ġ')."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from llmtrain.trainer.stages.ppo_trainer import PPOTrainer

    tok = AutoTokenizer.from_pretrained(str(assets.model))
    words = torch.tensor([i for i in range(len(tok)) if tok.convert_ids_to_tokens(i)[0] == "Ġ"])

    def score(ids: torch.Tensor, mask: torch.Tensor, ctx: int) -> torch.Tensor:
        hits = torch.isin(ids[:, ctx:], words).float() * mask[:, ctx:]
        return hits.sum(1) / mask[:, ctx:].sum(1)

    torch.manual_seed(0)
    prompts = Dataset.from_list([{"prompt": f"question {i}: say hello"} for i in range(128)])
    trainer = PPOTrainer(
        policy=AutoModelForCausalLM.from_pretrained(str(assets.model)),
        score_fn=score,
        settings=PPOSettings(response_length=8, temperature=1.0, mini_batch_size=16, ppo_epochs=2),
        args=TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=32,
            max_steps=32,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            logging_steps=4,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),  # fmt: skip
        train_dataset=prompts,
        processing_class=tok,
    )
    trainer.train()
    rewards = history(trainer, "reward")
    print(f"ppo (rule reward): reward {rewards[0]:.3f} -> {rewards[-1]:.3f}: {rewards}")
    assert mean(rewards[-2:]) > mean(rewards[:2]) + 0.1
    assert history(trainer, "kl")[0] == pytest.approx(0.0, abs=1e-4)  # policy == reference


def ppo_stage(prompts: Path, max_steps: int, peft: str = "none") -> dict[str, Any]:
    return {
        "name": "ppo",
        "type": "ppo",
        "dataset": {"source": str(prompts), "format": "prompt-only"},
        "peft": {"method": peft, "r": 8, "alpha": 16},
        "hyperparameters": {
            "learningRate": 1e-2, "maxSteps": max_steps,
            "batchSize": 16, "loggingSteps": 4, "maxSeqLength": 64, "scheduler": "constant",
        },
        "ppo": {
            "rewardModel": {"fromStage": "rm"}, "klCoef": 0.05, "responseLength": 8,
            "temperature": 1.0, "miniBatchSize": 8, "ppoEpochs": 2,
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def reward_model(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ppo")
    data = write_preferences(root / "prefs.jsonl")
    stage = {
        "name": "rm",
        "type": "reward",
        "dataset": {
            "source": str(data), "format": "preference", "evalFraction": 0,
            "columns": PREFERENCE_COLUMNS,
        },
        "hyperparameters": {"learningRate": 1e-3, "maxSteps": 24, "batchSize": 8,
                            "maxSeqLength": 64},
    }  # fmt: skip
    run(config(assets, root / "rm", stage))
    write_prompts(root / "prompts.jsonl", 64)
    return root / "rm" / "final"


@pytest.fixture(scope="module")
def trained(assets: Assets, reward_model: Path) -> tuple[Any, Path]:
    out = reward_model.parent.parent / "ppo"
    prompts = reward_model.parent.parent / "prompts.jsonl"
    cfg = config(assets, out, ppo_stage(prompts, 40), reward_model=str(reward_model),
                 checkpointing={"everySteps": 20})  # fmt: skip
    return run(cfg), out


def test_ppo_stage_raises_the_reward_model_score(trained: tuple[Any, Path]) -> None:
    trainer, out = trained
    rewards, kl = history(trainer, "reward"), history(trainer, "kl")
    print(f"ppo (reward model): reward {rewards[0]:.3f} -> {rewards[-1]:.3f}: {rewards}; "
          f"kl {kl[0]:.3f} -> {kl[-1]:.3f}")  # fmt: skip
    assert mean(rewards[-2:]) > mean(rewards[:2]) + 0.2
    assert trainer.ref_policy is not None  # full fine-tuning: a frozen copy of the input model
    logged = set().union(*(h.keys() for h in trainer.state.log_history))
    assert {"reward", "reward_std", "kl", "generation_seconds", "update_seconds"} <= logged
    gen, upd = history(trainer, "generation_seconds"), history(trainer, "update_seconds")
    assert gen == sorted(gen) and upd == sorted(upd) and gen[-1] > 0 and upd[-1] > 0
    # final/ is the policy alone: a causal LM that later stages load; checkpoints keep the head.
    assert not (out / "final" / "value_head.safetensors").exists()
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-40" / "value_head.safetensors").is_file()


def test_ppo_resumes_from_checkpoint(
    assets: Assets, trained: tuple[Any, Path], reward_model: Path
) -> None:
    _, out = trained
    prompts = reward_model.parent.parent / "prompts.jsonl"
    cfg = config(assets, out, ppo_stage(prompts, 44), reward_model=str(reward_model),
                 checkpointing={"everySteps": 20})  # fmt: skip
    trainer = run(cfg)
    assert str(trainer.resumed_from).endswith("checkpoint-40")
    assert (trainer.first_step, trainer.state.global_step) == (40, 44)


def test_lora_ppo_uses_the_adapter_disabled_reference(assets: Assets, reward_model: Path) -> None:
    from peft import PeftModel

    out = reward_model.parent.parent / "ppo-lora"
    prompts = reward_model.parent.parent / "prompts.jsonl"
    cfg = config(assets, out, ppo_stage(prompts, 8, peft="lora"), reward_model=str(reward_model))
    trainer = run(cfg)
    assert trainer.ref_policy is None
    assert isinstance(trainer.accelerator.unwrap_model(trainer.model).policy, PeftModel)
    assert history(trainer, "kl")[0] == pytest.approx(0.0, abs=1e-4)
    assert (out / "final" / "adapter_config.json").is_file()


def test_value_head_takes_the_trained_weights_dtype(assets: Assets) -> None:
    """DeepSpeed ZeRO-3 flattens all trained weights into one buffer of one dtype."""
    from transformers import AutoModelForCausalLM

    from llmtrain.trainer.stages.ppo_trainer import PolicyAndValue

    policy = AutoModelForCausalLM.from_pretrained(str(assets.model), dtype=torch.bfloat16)
    assert PolicyAndValue(policy).value_head.weight.dtype == torch.bfloat16
    ids = torch.tensor([[5, 6, 7]])
    logits, values = PolicyAndValue(policy)(ids, torch.ones_like(ids))
    assert values.shape == (1, 3) and torch.all(values == 0)  # zero-initialised head


def test_prompts_are_left_padded_and_keep_their_end(assets: Assets, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from llmtrain.trainer.stages.ppo_trainer import PPOTrainer

    tok = AutoTokenizer.from_pretrained(str(assets.tokenizer))
    trainer = PPOTrainer(
        policy=AutoModelForCausalLM.from_pretrained(str(assets.model)),
        score_fn=lambda ids, mask, ctx: mask.sum(1).float(),
        settings=PPOSettings(mini_batch_size=2, max_prompt_length=4),
        args=TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True
        ),  # fmt: skip
        train_dataset=Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
        processing_class=tok,
    )
    long, short = "the cat sees the dog in the park at home", "hi"
    batch = trainer._collate([{"prompt": long}, {"prompt": short}])
    assert batch["input_ids"][0].tolist() == tok(long, add_special_tokens=False)["input_ids"][-4:]
    assert batch["attention_mask"][1].tolist() == [0] * (4 - len(tok(short)["input_ids"])) + [
        1
    ] * len(tok(short)["input_ids"])
