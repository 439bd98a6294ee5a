"""Evaluation in the driver: the eval stage's metrics, and the probes after any stage.

    metrics = evaluate.eval_stage(cfg)                 # type eval: writes eval.json, probes.json
    metrics = evaluate.after_stage(cfg, result)        # a training stage: loss, evalLoss, probes
    config.check_gates(cfg.stage.gates, metrics)       # the pipeline and the operator decide

Metric names are the gate names (config.GATE_METRIC). lm-evaluation-harness runs the
question/answer set and any `eval.tasks`, from task YAMLs that read local files (it cannot
reach a hub here); what it lacks is ours: token perplexity (it reports word and byte
perplexity), preference accuracy by implicit or model reward, and the probes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from llmtrain.trainer import data, models
from llmtrain.trainer.config import DataFormat, EvalMatch, EvalParams, ModelRef, ProbeSpec
from llmtrain.trainer.contract import EVAL, FINAL, PROBES, StageConfig, write_json

log = logging.getLogger(__name__)


def load(source: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a full model or an adapter dir."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.tokenizer_dir(source))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return models.load_pretrained(source).eval(), tok


def perplexity(model: Any, tok: Any, texts: list[str], max_length: int) -> float:
    """exp(mean token NLL) over every predicted token of every text (token-weighted)."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
            ids = ids["input_ids"]
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    if not count:
        raise ValueError("perplexity: no text has two tokens or more")
    return math.exp(nll / count)


def sequence_logprob(model: Any, tok: Any, prompt: str, answer: str) -> float:
    """log p(answer | prompt), summed over the answer's tokens."""
    import torch

    p = tok(prompt, add_special_tokens=True)["input_ids"]
    full = tok(prompt + answer, add_special_tokens=True)["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return float(picked[max(len(p) - 1, 0) :].sum())


def preference_accuracy(
    policy: Any, tok: Any, rows: list[dict[str, Any]], reference: Any | None = None
) -> float:
    """Fraction of pairs whose chosen answer gets the higher implicit reward
    log p(y|x) - log p_ref(y|x) (reference None: log p(y|x) alone)."""

    def reward(prompt: str, answer: str) -> float:
        r = sequence_logprob(policy, tok, prompt, answer)
        return r - sequence_logprob(reference, tok, prompt, answer) if reference else r

    wins = [reward(r.get("prompt", ""), r["chosen"]) > reward(r.get("prompt", ""), r["rejected"])
            for r in rows]  # fmt: skip
    return sum(wins) / len(wins)


def reward_accuracy(reward_model: Any, tok: Any, rows: list[dict[str, Any]]) -> float:
    """Fraction of pairs a reward model (one logit) scores chosen over rejected."""
    import torch

    def score(text: str) -> float:
        with torch.no_grad():
            return float(reward_model(**tok(text, return_tensors="pt")).logits[0, 0])

    wins = [score(r.get("prompt", "") + r["chosen"]) > score(r.get("prompt", "") + r["rejected"])
            for r in rows]  # fmt: skip
    return sum(wins) / len(wins)


def generate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions, one prompt at a time (no padding effects on a tiny model)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
            out.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def run_probes(model: Any, tok: Any, spec: ProbeSpec) -> list[dict[str, Any]]:
    """Each probe's prompt, answer and verdict (substring or regex search)."""
    answers = generate(model, tok, [p.prompt for p in spec.prompts], spec.max_new_tokens)
    out = []
    for probe, answer in zip(spec.prompts, answers, strict=True):
        if probe.regex is not None:
            passed = re.search(probe.regex, answer) is not None
        else:
            passed = (probe.contains or "") in answer
        out.append({"prompt": probe.prompt, "answer": answer, "passed": passed})
    return out


def probe_metrics(model: Any, tok: Any, cfg: StageConfig) -> dict[str, float]:
    """Run the job's probes, write probes.json in the stage directory, return the pass rate."""
    assert cfg.probes is not None
    results = run_probes(model, tok, cfg.probes)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.output_dir) / PROBES, {"stage": cfg.stage.name, "probes": results})
    return {"probes.passRate": sum(r["passed"] for r in results) / len(results)}


# An lm-evaluation-harness task over local question/answer rows: greedy, up to a newline.
_QA_TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{completion}}}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: {tokens}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_tasks(
    model: Any, tok: Any, tasks: list[str], task_dir: str, log_samples: bool = False
) -> dict[str, Any]:
    """lm-evaluation-harness on `tasks` from the YAMLs in `task_dir` (no built-in tasks):
    its `results` and, with `log_samples`, its per-sample records."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device=str(model.device))
    manager = TaskManager(include_path=task_dir, include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, log_samples=log_samples
    )
    if out is None:
        raise ValueError(f"lm_eval returned no results for {tasks}")
    return dict(out)


def task_metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm_eval's {task: {"exact_match,none": v, ...}} as {"tasks.<task>.<metric>": v}."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            out[f"tasks.{task}.{name}"] = float(value)
    return out


def qa_match(model: Any, tok: Any, rows: list[dict[str, Any]], params: EvalParams) -> float:
    """Exact match (lm_eval's metric) or regex match (the completion as a pattern, searched
    in lm_eval's answers) on question/answer rows."""
    with tempfile.TemporaryDirectory(prefix="llmtrain-qa-") as tmp:
        path = Path(tmp) / "qa.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        yaml = _QA_TASK.format(name="llmtrain_qa", data=path, tokens=params.max_new_tokens)
        (Path(tmp) / "qa.yaml").write_text(yaml)
        out = lm_eval_tasks(model, tok, ["llmtrain_qa"], tmp, log_samples=True)
    if params.match == EvalMatch.exact:
        return float(out["results"]["llmtrain_qa"]["exact_match,none"])
    samples = out["samples"]["llmtrain_qa"]
    hits = [re.search(s["target"], s["filtered_resps"][0]) is not None for s in samples]
    return sum(hits) / len(hits)


def _ref_path(cfg: StageConfig, ref: ModelRef) -> str:
    """A ModelRef of an eval stage: a path, or an earlier stage's final/ beside this one."""
    return ref.path or str(Path(cfg.output_dir).parent / (ref.from_stage or "") / FINAL)


def dataset_metrics(model: Any, tok: Any, cfg: StageConfig) -> dict[str, float]:
    """The metric the eval stage's dataset format calls for."""
    spec = cfg.stage.dataset
    params = cfg.stage.eval or EvalParams()
    ds = data.load_raw(spec, spec.split)
    if spec.max_samples:
        ds = ds.select(range(min(spec.max_samples, len(ds))))
    cols = data.columns(spec)
    rows = [{f: row[c] for f, c in cols.items() if c in row} for row in ds]
    if not rows:
        raise data.DataError(f"{spec.source}: no rows to evaluate")
    if spec.format == DataFormat.text:
        max_len = cfg.stage.hyperparameters.max_seq_length
        return {"perplexity": perplexity(model, tok, [r["text"] for r in rows], max_len)}
    if spec.format == DataFormat.prompt_completion:
        name = "exactMatch" if params.match == EvalMatch.exact else "regexMatch"
        return {name: qa_match(model, tok, rows, params)}
    if params.reward_model is not None:
        rm = models.load_pretrained(
            _ref_path(cfg, params.reward_model),
            auto_class="AutoModelForSequenceClassification",
            num_labels=1,
        ).eval()
        rm.config.pad_token_id = tok.pad_token_id
        return {"preferenceAccuracy": reward_accuracy(rm, tok, rows)}
    reference = None
    assert cfg.input_model is not None
    if params.reference_model is not None:
        reference = models.load_pretrained(_ref_path(cfg, params.reference_model)).eval()
    elif models.is_adapter_dir(cfg.input_model):
        reference = models.load_pretrained(models.adapter_base(cfg.input_model)).eval()
    return {"preferenceAccuracy": preference_accuracy(model, tok, rows, reference)}


def eval_stage(cfg: StageConfig) -> dict[str, float]:
    """An eval stage: its dataset's metric, its lm_eval tasks and the probes, in eval.json."""
    assert cfg.input_model is not None
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    model, tok = load(cfg.input_model)
    metrics = dataset_metrics(model, tok, cfg)
    params = cfg.stage.eval or EvalParams()
    if params.tasks:
        if not params.task_dir:
            raise ValueError(f"stage {cfg.stage.name}: eval.tasks need eval.taskDir")
        results = lm_eval_tasks(model, tok, params.tasks, params.task_dir)["results"]
        metrics |= task_metrics(results)
    if cfg.probes is not None:
        metrics |= probe_metrics(model, tok, cfg)
    write_json(Path(cfg.output_dir) / EVAL, {"model": cfg.input_model, "metrics": metrics})
    log.info("stage %s: %s", cfg.stage.name, metrics)
    return metrics


def after_stage(cfg: StageConfig, result: dict[str, Any]) -> dict[str, float]:
    """A training stage's result metrics: its final losses (result.json's, the eval loss on
    the final weights) and, when the job lists probes (afterEveryStage), the probes' pass
    rate on its final model."""
    metrics = {}
    for name, key in (("loss", "final_loss"), ("evalLoss", "eval_loss")):
        if isinstance(result.get(key), int | float):
            metrics[name] = float(result[key])
    if cfg.probes is not None and cfg.probes.after_every_stage:
        if result.get("probe_metrics"):  # run by the rank-0 worker (loop._probes)
            metrics |= result["probe_metrics"]
        else:
            model, tok = load(str(Path(cfg.output_dir) / FINAL))
            metrics |= probe_metrics(model, tok, cfg)
    return metrics
