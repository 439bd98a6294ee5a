"""The run report written at the end of `llmtrain run`: report.json, report.md, loss plots.

    write_report(job_dir, stage_configs)

Reads only the stage directories (docs/contracts.md §3), so it also works on a finished
cluster job's storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtrain.trainer.contract import METRICS, PROBES, RESULT, StageConfig, read_json
from llmtrain.trainer.metrics import LOG_KEYS
from llmtrain.trainer.pipeline import RUN_INFO

# Alignment series worth a plot: title -> the gauge the trainers' log keys map to.
ALIGNMENT_PLOTS = {
    "reward (mean)": "llmtrain_reward_mean",
    "KL to the reference": "llmtrain_kl",
    "preference accuracy": "llmtrain_preference_accuracy",
    "preference margin": "llmtrain_preference_margin",
}


def _history(stage_dir: Path) -> list[dict[str, Any]]:
    path = stage_dir / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by an interrupted run
    return rows


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    points = {int(r["step"]): float(r[key]) for r in rows if key in r and "step" in r}
    return sorted(points.items())


def alignment_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each alignment metric a stage logged (TRL names it variously: `rewards/margins`,
    `objective/kl`, ...), by plot title; training-set values only, not eval_ ones."""
    out = {}
    for title, gauge in ALIGNMENT_PLOTS.items():
        keys = [k for k, g in LOG_KEYS.items() if g == gauge and not k.startswith("eval_")]
        points = dict(p for k in keys for p in _series(rows, k))
        if points:
            out[title] = sorted(points.items())
    return out


def stage_summary(cfg: StageConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    result = read_json(out / RESULT)
    run = read_json(out / RUN_INFO)
    rows = _history(out)
    evals = [v for _, v in _series(rows, "eval_loss")]
    aligned = alignment_series(rows)
    return {
        "stage": cfg.stage.name,
        "type": cfg.stage.type,
        "duration_seconds": round(run["finished"] - run["started"], 1) if run else None,
        "steps": result.get("steps"),
        "final_loss": result.get("final_loss"),
        "best_loss": result.get("best_loss"),  # the stage's, from its whole log history
        "final_eval_loss": evals[-1] if evals else None,
        "tokens_per_second": result.get("tokens_per_second"),
        "output": result.get("output"),
        "metrics": result.get("metrics") or {},  # evaluate.py: what gates read
        "alignment": {title: points[-1][1] for title, points in aligned.items()},
        "plot": str(out / "loss.png")
        if plot_loss(cfg.stage.name, rows, out / "loss.png")
        else None,
        "alignment_plot": str(out / "alignment.png")
        if plot_alignment(cfg.stage.name, aligned, out / "alignment.png")
        else None,
    }


def plot_loss(name: str, rows: list[dict[str, Any]], path: Path) -> bool:
    train, evals = _series(rows, "loss"), _series(rows, "eval_loss")
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set(title=f"{name}: loss", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_alignment(name: str, series: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    """One panel per alignment metric the stage logged (reward, KL, preference accuracy and
    margin): how a dpo, ppo, grpo or reward stage moved, beyond its loss."""
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3), dpi=100, squeeze=False)
    for ax, (title, points) in zip(axes[0], series.items(), strict=True):
        ax.plot(*zip(*points, strict=True))
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# (report key, column header, number format)
_COLUMNS = [
    ("stage", "stage", ""),
    ("type", "type", ""),
    ("duration_seconds", "duration (s)", ".1f"),
    ("steps", "steps", ""),
    ("final_loss", "final loss", ".4f"),
    ("best_loss", "best loss", ".4f"),
    ("tokens_per_second", "tokens/s", ",.0f"),
    ("output", "output", ""),
]


def _cell(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    return format(v, fmt) if fmt and isinstance(v, int | float) else str(v)


def write_report(job_dir: Path, configs: list[StageConfig]) -> dict[str, Any]:
    job_dir.mkdir(parents=True, exist_ok=True)
    stages = [stage_summary(c) for c in configs]
    report = {"job": configs[0].job if configs else "", "stages": stages}
    (job_dir / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Run report: {report['job']}", ""]
    lines.append("| " + " | ".join(h for _, h, _ in _COLUMNS) + " |")
    lines.append("|" + " --- |" * len(_COLUMNS))
    for st in stages:
        lines.append("| " + " | ".join(_cell(st[k], f) for k, _, f in _COLUMNS) + " |")
    lines.append("")
    for s in stages:
        plots = [
            (f"{s['stage']} {what}", s[key])
            for what, key in (("loss", "plot"), ("alignment metrics", "alignment_plot"))
            if s[key]
        ]
        if plots:
            lines += [f"## {s['stage']}", ""]
        if s["alignment"]:
            lines += ["Final " + ", ".join(f"{k}: {v:.4g}" for k, v in s["alignment"].items()), ""]
        for alt, plot in plots:
            rel = Path(plot).relative_to(job_dir) if plot.startswith(str(job_dir)) else plot
            lines += [f"![{alt}]({rel})", ""]
    lines += gate_lines(configs) + probe_lines(configs)
    from llmtrain.trainer.initializer import report_lines

    lines += report_lines(job_dir)
    (job_dir / "report.md").write_text("\n".join(lines))
    return report


def _md(text: str) -> str:
    """One table cell: pipes escaped, newlines shown as ⏎."""
    return text.replace("|", "\\|").replace("\n", "⏎").strip() or "(empty)"


def gate_lines(configs: list[StageConfig]) -> list[str]:
    """## Gates: each stage's gates against its result metrics (pipeline.stage_gates)."""
    from llmtrain.trainer.pipeline import stage_gates

    rows = [(c.stage.name, g) for c in configs for g in stage_gates(c)]
    if not rows:
        return []
    out = ["## Gates", "", "| stage | gate | verdict |", "| --- | --- | --- |"]
    for stage, g in rows:
        out.append(f"| {stage} | {g['message']} | {'passed' if g['passed'] else '**FAILED**'} |")
    return [*out, ""]


def probe_lines(configs: list[StageConfig]) -> list[str]:
    """## Probes: the same prompts answered after each stage (probes.json), so the table
    shows how the answers changed from stage to stage."""
    read = [(c.stage.name, read_json(Path(c.output_dir) / PROBES)) for c in configs]
    runs: list[tuple[str, list[dict[str, Any]]]] = [
        (name, r["probes"]) for name, r in read if r.get("probes")
    ]
    if not runs:
        return []
    prompts = list(dict.fromkeys(p["prompt"] for _, probes in runs for p in probes))
    out = ["## Probes", "", "| prompt | " + " | ".join(f"after {n}" for n, _ in runs) + " |"]
    out.append("|" + " --- |" * (len(runs) + 1))
    for prompt in prompts:
        cells = []
        for _, probes in runs:
            hit = next((p for p in probes if p["prompt"] == prompt), None)
            mark = "" if hit is None else (" ✅" if hit["passed"] else " ❌")
            cells.append("-" if hit is None else _md(hit["answer"]) + mark)
        out.append(f"| {_md(prompt)} | " + " | ".join(cells) + " |")
    rates = [sum(p["passed"] for p in probes) / len(probes) for _, probes in runs]
    out.append("| **pass rate** | " + " | ".join(f"{r:.0%}" for r in rates) + " |")
    return [*out, ""]
