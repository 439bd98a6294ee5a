"""Measure what the quickstart promises: answers in the SFT format, and the DPO-chosen style.

    format_rate, hedge_rate = measure(model_dir, questions)

Sampling (temperature 0.7, top-k 20, fixed seed) rather than greedy decoding: a style
preference shows up as a shift in the distribution of answers, which greedy decoding hides.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
HEDGE_OPENERS = ("Well", "Hmm", "Honestly")
# One plain sentence: "The sky is blue." / "A duck has two legs."
PLAIN = re.compile(r"^(The|A) [a-z]+ [a-z ]+\.$")


def questions(limit: int = 24) -> list[str]:
    seen: list[str] = []
    for line in (QUICKSTART / "instructions.jsonl").read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        if prompt not in seen:
            seen.append(prompt)
    return seen[:: max(1, len(seen) // limit)][:limit]


def sample(model_dir: Path, prompts: list[str], n: int = 4, max_new_tokens: int = 40) -> list[str]:
    import torch
    from transformers import AutoTokenizer

    from llmtrain.trainer import models

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(models.tokenizer_dir(str(model_dir)))
    lm = models.load_pretrained(str(model_dir)).eval()
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")
            out = lm.generate(
                **ids,
                do_sample=True,
                temperature=0.7,
                top_k=20,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            for row in out[:, ids["input_ids"].shape[1] :]:
                answers.append(tok.decode(row, skip_special_tokens=True).strip())
    return answers


def measure(model_dir: Path, prompts: list[str]) -> tuple[float, float, list[str]]:
    """(share of answers that are one plain sentence, share that hedge, the answers)."""
    answers = sample(model_dir, prompts)
    plain = sum(bool(PLAIN.match(a)) for a in answers) / len(answers)
    hedged = sum(a.startswith(HEDGE_OPENERS) for a in answers) / len(answers)
    return plain, hedged, answers
