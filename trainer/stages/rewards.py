"""Rule rewards for GRPO, as plain functions with TRL's reward-function signature.

A reward function takes the prompts, the completions and every other dataset column as
keyword arguments, and returns one float per completion (None means "not applicable"):

    fn(prompts=[...], completions=[...], completion_ids=[[...], ...], answer=[...]) -> [1.0, ...]

`build(names, format_regex=..., target_length=...)` turns the names a stage lists in
`grpo.rewardFunctions` into such functions; TRL sums them (GRPOParams.reward_functions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from llmtrain.trainer.config import RuleReward

RewardFunc = Callable[..., list[float | None]]


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes strings, or a list of chat messages when conversational."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    **_: Any,
) -> list[float | None]:
    """1.0 when the completion equals the `answer` column (whitespace-normalised), else 0.0."""
    if answer is None:
        raise ValueError("the exact-match reward needs an `answer` column (dataset.columns.answer)")
    return [
        None if ref is None else float(_normalise(completion_text(c)) == _normalise(str(ref)))
        for c, ref in zip(completions, answer, strict=True)
    ]


def format_reward(pattern: str) -> RewardFunc:
    """1.0 when `re.search(pattern, completion)` matches; anchor with ^...$ for the whole text."""
    compiled = re.compile(pattern)

    def format_match(
        prompts: Sequence[Any], completions: Sequence[Any], **_: Any
    ) -> list[float | None]:
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    return format_match


def length_penalty(target_length: int) -> RewardFunc:
    """0 up to `target_length` tokens, then -(excess / target_length): longer is worse, linearly."""

    def length_penalty(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **_: Any,
    ) -> list[float | None]:
        # Token counts when TRL passes them (it always does); words for a direct call.
        lengths = (
            [len(ids) for ids in completion_ids]
            if completion_ids is not None
            else [len(completion_text(c).split()) for c in completions]
        )
        return [-max(0, n - target_length) / target_length for n in lengths]

    return length_penalty


def build(
    names: Sequence[RuleReward | str], *, format_regex: str = r"^.+$", target_length: int = 64
) -> list[RewardFunc]:
    """The rule rewards a stage names, in order (each name at most once makes sense)."""
    factories: dict[str, Callable[[], RewardFunc]] = {
        RuleReward.exact_match.value: lambda: exact_match,
        RuleReward.regex_format.value: lambda: format_reward(format_regex),
        RuleReward.length_penalty.value: lambda: length_penalty(target_length),
    }
    return [factories[RuleReward(n).value]() for n in names]
