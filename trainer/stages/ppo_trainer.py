"""The smallest correct RLHF PPO, as a `transformers.Trainer`, so it inherits the engine's
optimizer, DeepSpeed, checkpoints, resume, logging and metrics.

TRL 1.x removed its PPO trainer (there is no `trl.experimental.ppo` in the pinned TRL), so
this follows the algorithm of Ouyang et al. 2022 (InstructGPT) as written down in Huang et
al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR
Summarization" (the design of TRL's former PPOTrainer):

1. Rollout: sample a response per prompt with pure temperature sampling (no top-k/top-p) and
   cut it after the first EOS.
2. Score: the reward model's scalar on prompt+response, at the response's last token.
3. Per-token reward: -kl_coef * (log pi(a|s) - log pi_ref(a|s)), plus the score on the last
   token. Log-probs use logits / temperature, so they match the sampling distribution.
4. Advantages: GAE (gamma=1, lambda=0.95) on a value head; advantages whitened per rollout.
5. Update: `ppo_epochs` passes over shuffled mini-batches of the rollout; clipped policy loss
   plus clipped value loss (clip 0.2), one optimizer step per mini-batch.

The value function is a linear head on the policy's last hidden state (`PolicyAndValue`), so
LoRA and QLoRA need no second trainable model. The reference is the policy with its adapter
disabled for a PEFT policy, else a frozen copy taken before training.

    trainer = PPOTrainer(policy=model, reward_model=rm, settings=PPOSettings(),
                         args=TrainingArguments(...), train_dataset=prompts, processing_class=tok)
    trainer.train()   # each Trainer step is one mini-batch update; a rollout every k steps
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig, Trainer
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler, disable_dropout_in_model, selective_log_softmax

from llmtrain.trainer.stages.common import GenerationTimer

ScoreFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
VALUE_HEAD = "value_head.safetensors"


@dataclass
class PPOSettings:
    kl_coef: float = 0.05
    response_length: int = 64
    temperature: float = 0.7
    mini_batch_size: int = 4
    ppo_epochs: int = 4
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_prompt_length: int | None = None  # longer prompts lose their start


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows, as `generate` computes them."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns)."""
    rewards, values = rewards * mask, values * mask  # after EOS: no reward, no value
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages, advantages + values


def response_mask(response: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 for response tokens up to and including the first EOS, 0 after it."""
    eos = torch.isin(response, torch.tensor(eos_token_id, device=response.device).flatten())
    return ((eos.long().cumsum(1) - eos.long()) == 0).long()


def ppo_losses(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    batch: dict[str, torch.Tensor],
    s: PPOSettings,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate policy loss + vf_coef * clipped value loss, over response tokens."""
    m, adv = batch["mask"], batch["advantages"]
    ratio = torch.exp(logprobs - batch["logprobs"])
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - s.cliprange, 1 + s.cliprange))
    v_clip = batch["values"] + (values - batch["values"]).clamp(
        -s.cliprange_value, s.cliprange_value
    )
    vf = 0.5 * torch.max((values - batch["returns"]) ** 2, (v_clip - batch["returns"]) ** 2)
    pg_loss, vf_loss = masked_mean(pg, m), masked_mean(vf, m)
    stats = {
        "policy_loss": pg_loss.item(),
        "value_loss": vf_loss.item(),
        "clipfrac": masked_mean((ratio - 1).abs().gt(s.cliprange).float(), m).item(),
        "approx_kl": masked_mean(0.5 * (logprobs - batch["logprobs"]) ** 2, m).item(),
    }
    return pg_loss + s.vf_coef * vf_loss, stats


class PolicyAndValue(nn.Module):
    """The trained module: the policy (a causal LM, maybe PEFT) and a scalar value head."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.config = policy.config
        hidden = policy.config.get_text_config().hidden_size
        # The dtype of the other trained weights: DeepSpeed ZeRO-3 flattens them into one buffer.
        trained = [p.dtype for p in policy.parameters() if p.requires_grad]
        dtype = trained[0] if trained else next(policy.parameters()).dtype
        self.value_head = nn.Linear(hidden, 1, dtype=dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = out.hidden_states[-1].to(self.value_head.weight.dtype)
        return out.logits, self.value_head(hidden).squeeze(-1)

    # Trainer and TRL's unwrap_model_for_generation toggle gradient checkpointing on the model.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.policy.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()


def reward_model_scorer(reward_model: nn.Module) -> ScoreFn:
    """Score with a sequence-classification model's head at the last response token.

    Computed from the mask rather than the pad token, so a tokenizer whose pad is its EOS
    still scores the EOS the reward stage trained on.
    """

    def score(ids: torch.Tensor, mask: torch.Tensor, context_length: int) -> torch.Tensor:
        backbone = getattr(reward_model, reward_model.base_model_prefix)
        hidden = backbone(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).last_hidden_state
        logits = reward_model.score(hidden).squeeze(-1)
        last = context_length - 1 + mask[:, context_length:].sum(1)
        return logits[torch.arange(ids.shape[0], device=ids.device), last].float()

    return score


class PPOTrainer(GenerationTimer, Trainer):
    loss_is_scaled_for_ga = False  # a mean per micro-batch: let the Trainer divide by GA
    save_value_head = True  # checkpoints need it; the stage's final/ is the policy alone

    def __init__(
        self,
        *,
        policy: nn.Module,
        settings: PPOSettings,
        reward_model: nn.Module | None = None,
        score_fn: ScoreFn | None = None,
        ref_policy: nn.Module | None = None,
        **kwargs: Any,
    ):
        """`reward_model` (a frozen sequence classifier) or `score_fn` scores the rollouts."""
        args = kwargs["args"]
        args.remove_unused_columns = False  # the collator needs the raw `prompt` column
        s, self.ppo = settings, settings
        ga, batch = args.gradient_accumulation_steps, args.per_device_train_batch_size
        if batch % s.mini_batch_size or s.mini_batch_size % ga:
            raise ValueError(
                f"ppo: batchSize ({batch}) must be a multiple of ppo.miniBatchSize "
                f"({s.mini_batch_size}), itself a multiple of gradientAccumulationSteps ({ga})"
            )
        prompts = args.per_device_train_batch_size * args.world_size
        if len(kwargs["train_dataset"]) < prompts:
            raise ValueError(
                f"ppo: {len(kwargs['train_dataset'])} prompts, fewer than one batch ({prompts})"
            )
        self.micro_size = s.mini_batch_size // ga
        # Trainer micro-steps per rollout: each mini-batch of each PPO epoch, in GA micro-batches.
        self.steps_per_rollout = s.ppo_epochs * (batch // s.mini_batch_size) * ga
        if not isinstance(policy, PeftModel) and ref_policy is None:
            ref_policy = copy.deepcopy(policy)  # frozen before any update, so resume keeps it
        disable_dropout_in_model(policy)  # rollout and update log-probs must agree
        kwargs.setdefault("data_collator", self._collate)
        super().__init__(model=PolicyAndValue(policy), **kwargs)
        self.tokenizer = self.processing_class
        self.ref_policy = self._prepare_frozen(ref_policy) if ref_policy is not None else None
        if reward_model is not None:
            score_fn = reward_model_scorer(self._prepare_frozen(reward_model))
        if score_fn is None:
            raise ValueError("PPOTrainer needs a reward_model or a score_fn")
        self.score_fn = score_fn
        self.generation_config = GenerationConfig(
            max_new_tokens=s.response_length,
            do_sample=True,
            temperature=s.temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self._buffer: list[dict[str, torch.Tensor]] | None = None
        self._calls = 0
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _prepare_frozen(self, module: nn.Module) -> nn.Module:
        module.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(module, self.accelerator)
        return module.to(self.accelerator.device)

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
        if self.ppo.max_prompt_length:  # keep the end of a long prompt, next to the response
            ids = [x[-self.ppo.max_prompt_length :] for x in ids]
        padded = self.tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
        return dict(padded)

    def _get_train_sampler(self, dataset: Any = None) -> RepeatSampler:
        # Each global prompt batch comes back `steps_per_rollout` times: one Trainer micro-step
        # per PPO mini-batch, so the Trainer counts, clips, schedules and checkpoints updates.
        return RepeatSampler(
            dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=1,
            batch_size=self.args.per_device_train_batch_size * self.accelerator.num_processes,
            repeat_count=self.steps_per_rollout,
            shuffle=True,
            seed=self.args.seed,
        )

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if self._calls % self.steps_per_rollout == 0 or self._buffer is None:
            prompts = super()._prepare_inputs(inputs)
            with self.generating():  # sampling, scoring and the advantages
                self._buffer = self._rollout(prompts)
        batch = self._buffer[self._calls % self.steps_per_rollout]
        self._calls += 1
        return batch

    @torch.no_grad()
    def _rollout(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        query, qmask = batch["input_ids"], batch["attention_mask"]
        ctx = query.shape[1]
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            ids = unwrapped.policy.generate(
                input_ids=query, attention_mask=qmask, generation_config=self.generation_config
            )
        rmask = response_mask(ids[:, ctx:], self.tokenizer.eos_token_id)
        ids[:, ctx:] = ids[:, ctx:].masked_fill(rmask == 0, self.tokenizer.pad_token_id)
        mask = torch.cat([qmask, rmask], dim=1)
        logprobs, values = self._logprobs_values(self.model, ids, mask, ctx)
        if self.ref_policy is not None:
            ref_logits = self.ref_policy(
                input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
            ).logits
        else:
            with self.accelerator.unwrap_model(self.model).policy.disable_adapter():
                ref_logits = self.model(ids, mask)[0]
        ref_logprobs = self._token_logprobs(ref_logits, ids, ctx)
        score = self.score_fn(ids, mask, ctx)
        del ref_logits

        rmask_f = rmask.float()
        kl = (logprobs - ref_logprobs) * rmask_f
        rewards = -self.ppo.kl_coef * kl
        last = rmask.sum(1) - 1
        rewards[torch.arange(ids.shape[0]), last] += score
        advantages, returns = gae(rewards, values, rmask_f, self.ppo.gamma, self.ppo.lam)
        advantages = whiten(advantages, rmask_f)
        gathered = self.accelerator.gather(score)
        self._metrics["reward"].append(gathered.mean().item())
        self._metrics["reward_std"].append(gathered.std().item() if gathered.numel() > 1 else 0.0)
        self._metrics["kl"].append(self.accelerator.gather(kl.sum(1)).mean().item())
        self._metrics["response_length"].append(rmask_f.sum(1).mean().item())

        rollout = {
            "input_ids": ids,
            "attention_mask": mask,
            "mask": rmask_f,
            "logprobs": logprobs,
            "values": values,
            "advantages": advantages,
            "returns": returns,
        }
        micro: list[dict[str, torch.Tensor]] = []
        for _ in range(self.ppo.ppo_epochs):
            order = torch.randperm(ids.shape[0], device=ids.device)
            for i in range(0, ids.shape[0], self.micro_size):
                sel = order[i : i + self.micro_size]
                micro.append({k: v[sel] for k, v in rollout.items()} | {"context_length": ctx})
        return micro

    def _token_logprobs(self, logits: torch.Tensor, ids: torch.Tensor, ctx: int) -> torch.Tensor:
        logits = logits[:, ctx - 1 : -1].float() / self.ppo.temperature
        return selective_log_softmax(logits, ids[:, ctx:])

    def _logprobs_values(
        self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, ctx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, values = model(ids, mask)
        return self._token_logprobs(logits, ids, ctx), values[:, ctx - 1 : -1].float()

    def compute_loss(  # type: ignore[override]
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **_: Any
    ) -> torch.Tensor:
        ctx = int(inputs["context_length"])
        logprobs, values = self._logprobs_values(
            model, inputs["input_ids"], inputs["attention_mask"], ctx
        )
        loss, stats = ppo_losses(logprobs, values, inputs, self.ppo)
        for k, v in stats.items():
            self._metrics[k].append(v)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items()})
            logs.update(self.timing())  # cumulative: counters
            self._metrics.clear()
        super().log(logs, start_time)

    # Checkpoints hold the policy as `save_pretrained` writes it (a full model or an adapter)
    # plus the value head; tied embeddings rule out the Trainer's raw state-dict fallback.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        out = Path(output_dir or self.args.output_dir)
        unwrapped = self.accelerator.unwrap_model(self.model)
        state_dict = state_dict if state_dict is not None else unwrapped.state_dict()
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        policy_sd = {
            k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")
        }
        unwrapped.policy.save_pretrained(str(out), state_dict=policy_sd)
        head = {
            k[len("value_head.") :]: v.contiguous()
            for k, v in state_dict.items()
            if k.startswith("value_head.")
        }
        if self.save_value_head:
            save_file(head, str(out / VALUE_HEAD))
        self.tokenizer.save_pretrained(str(out))

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        from safetensors.torch import load_file

        unwrapped = self.accelerator.unwrap_model(model or self.model)
        ckpt = Path(resume_from_checkpoint)
        if isinstance(unwrapped.policy, PeftModel):
            from peft import set_peft_model_state_dict

            adapter = load_file(str(ckpt / "adapter_model.safetensors"))
            set_peft_model_state_dict(unwrapped.policy, adapter)
        else:
            from transformers.trainer_utils import load_sharded_checkpoint

            if (ckpt / "model.safetensors").exists():
                unwrapped.policy.load_state_dict(
                    load_file(str(ckpt / "model.safetensors")), strict=False
                )
            else:
                load_sharded_checkpoint(unwrapped.policy, str(ckpt), strict=False)
        unwrapped.value_head.load_state_dict(load_file(str(ckpt / VALUE_HEAD)))
