"""The eval stage's measurements on the tiny model, in the driver (no Ray): perplexity against
an independent exp(mean token NLL), exact match through lm-evaluation-harness on a
20-question set, a custom local lm_eval task, preference accuracy and the probes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from llmtrain.trainer import evaluate, tiny
from llmtrain.trainer.config import EvalParams, ProbeSpec
from llmtrain.trainer.contract import EVAL, PROBES, RESULT

from .helpers import Assets, stage_config

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def lm(assets: Assets) -> tuple[Any, Any]:
    return evaluate.load(str(assets.model))


def _greedy(lm: tuple[Any, Any], prompt: str, tokens: int) -> str:
    model, tok = lm
    return evaluate.generate(model, tok, [prompt], tokens)[0]


def test_perplexity_is_exp_of_mean_token_nll(lm: tuple[Any, Any], assets: Assets) -> None:
    import torch

    model, tok = lm
    texts = assets.corpus.read_text().splitlines()[:12]
    nll, n = 0.0, 0
    for text in texts:  # independently: per-token log-softmax, summed by hand
        ids = tok(text, truncation=True, max_length=64)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        nll -= sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)))
        n += len(ids) - 1
    got = evaluate.perplexity(model, tok, texts, max_length=64)
    assert got == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert 1 < got < len(tok) * 2  # an untrained model: near the vocabulary size


def test_eval_stage_exact_match_through_lm_eval(
    lm: tuple[Any, Any], assets: Assets, tmp_path: Path
) -> None:
    """20 questions in the quickstart data's format: half answered with what the model
    itself says greedily (up to the newline lm_eval stops at), half with the reference; the
    untrained model gets the references wrong, so exact match is exactly 0.5."""
    qa = tiny.write_instructions(tmp_path / "qa.jsonl", n=20, seed=7)
    rows = [json.loads(line) for line in qa.read_text().splitlines()]
    for row in rows[::2]:
        row["completion"] = _greedy(lm, row["prompt"], 8).split("\n")[0]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = stage_config(
        assets,
        tmp_path / "eval",
        "eval",
        {"source": str(qa), "format": "prompt-completion"},
        input_model=str(assets.model),
    )
    cfg.stage.eval = EvalParams(max_new_tokens=8)
    cfg.probes = ProbeSpec.model_validate(
        {
            "prompts": [
                {"prompt": rows[0]["prompt"], "contains": rows[0]["completion"][:3]},
                {"prompt": rows[1]["prompt"], "regex": "^never-said$"},
            ],
            "maxNewTokens": 8,
        }
    )
    metrics = evaluate.eval_stage(cfg)
    assert metrics["exactMatch"] == pytest.approx(0.5)
    assert metrics["probes.passRate"] == pytest.approx(0.5)
    written = json.loads((tmp_path / "eval" / EVAL).read_text())
    assert written["metrics"] == metrics
    probes = json.loads((tmp_path / "eval" / PROBES).read_text())["probes"]
    assert [p["passed"] for p in probes] == [True, False]
    assert probes[0]["answer"].startswith(rows[0]["completion"][:3])


def test_custom_local_lm_eval_task(lm: tuple[Any, Any], tmp_path: Path) -> None:
    """A task YAML of our own, reading a local jsonl (no hub): lm_eval runs it on the tiny
    model, and its metrics come back as tasks.<task>.<metric>."""
    data = tmp_path / "colors.jsonl"
    rows = [{"q": f"the {x} is", "choices": ["green", "blue"], "gold": i % 2}
            for i, x in enumerate(["grass", "sky", "leaf", "sea", "tree", "river"])]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "colors.yaml").write_text(
        "task: colors\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n'
        "metric_list:\n  - metric: acc\n"
    )
    model, tok = lm
    out = evaluate.lm_eval_tasks(model, tok, ["colors"], str(tmp_path), log_samples=True)
    metrics = evaluate.task_metrics(out["results"])
    assert set(metrics) == {"tasks.colors.acc"}
    samples = out["samples"]["colors"]
    assert len(samples) == len(rows)
    # The accuracy is the share of samples whose gold choice had the higher log-likelihood.
    hits = [max(range(2), key=lambda i: s["filtered_resps"][i][0]) == s["target"]
            for s in samples]  # fmt: skip
    assert metrics["tasks.colors.acc"] == pytest.approx(sum(hits) / len(rows))


def test_preference_accuracy_by_implicit_reward(lm: tuple[Any, Any]) -> None:
    """Against log p(answer | prompt) computed independently (the causal LM's own loss over
    the answer tokens); swapping chosen and rejected turns the accuracy into its complement."""
    import random

    import torch

    model, tok = lm
    rng = random.Random(3)
    rows = []
    for i in range(10):
        prompt = f"question: what is {i} plus {i}?\nanswer: "
        rows.append({"prompt": prompt, "chosen": f"{i} plus {i} is {2 * i}.",
                     "rejected": tiny.sentence(rng)})  # fmt: skip

    def logp(prompt: str, answer: str) -> float:
        n = len(tok(prompt)["input_ids"])
        ids = torch.tensor([tok(prompt + answer)["input_ids"]])
        labels = ids.clone()
        labels[0, :n] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        return -float(loss) * int((labels[0, 1:] != -100).sum())

    wins = [logp(r["prompt"], r["chosen"]) > logp(r["prompt"], r["rejected"]) for r in rows]
    acc = evaluate.preference_accuracy(model, tok, rows)
    assert acc == pytest.approx(sum(wins) / len(rows))
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    assert evaluate.preference_accuracy(model, tok, swapped) == pytest.approx(1 - acc)
    # Against itself as the reference, every implicit reward is 0: no pair is won.
    assert evaluate.preference_accuracy(model, tok, rows, reference=model) == 0.0


def test_after_stage_metrics_and_gates(lm: tuple[Any, Any], assets: Assets, tmp_path: Path) -> None:
    """A training stage's result metrics feed its gates: losses from result.json, the
    probes on final/."""
    import shutil

    from llmtrain.trainer.config import Gate, check_gates

    out = tmp_path / "sft"
    shutil.copytree(assets.model, out / "final")
    cfg = stage_config(assets, out, "sft", {"source": str(assets.instructions),
                                            "format": "prompt-completion"})  # fmt: skip
    cfg.probes = ProbeSpec.model_validate({"prompts": [{"prompt": "a", "contains": "zzz"}]})
    metrics = evaluate.after_stage(cfg, {"final_loss": 2.5, "eval_loss": 2.75})
    assert metrics == {"loss": 2.5, "evalLoss": 2.75, "probes.passRate": 0.0}
    assert (out / PROBES).exists() and not (out / RESULT).exists()
    gates = [Gate(metric="evalLoss", max=1.2), Gate(metric="probes.passRate", min=0.0)]
    verdicts = check_gates(gates, metrics)
    assert [g["passed"] for g in verdicts] == [False, True]
    assert verdicts[0]["message"] == "evalLoss = 2.75, outside gate max 1.2"
