"""The local runner's planning (no training): path resolution, skipping, change detection."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from llmtrain.operator import api
from llmtrain.trainer import pipeline
from llmtrain.trainer.report import write_report

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def quickstart(**stage0_dataset) -> api.LLMTrainingJob:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["stages"][0]["dataset"].update(stage0_dataset)
    return api.parse_job(doc)


def test_paths_resolve_against_the_job_file_and_stages_chain(tmp_path) -> None:
    plans = pipeline.plan(quickstart(), QUICKSTART, tmp_path, workers=1, metrics_port=None)
    pre, sft, dpo = (p.config for p in plans)
    assert pre.stage.dataset.source == str(ROOT / "examples/quickstart/corpus.txt")
    assert pre.model.tokenizer.source == str(ROOT / "examples/quickstart/tokenizer")
    assert pre.input_model is None  # built from the architecture
    assert sft.input_model == f"{tmp_path}/quickstart/pretrain/final"
    assert dpo.input_model == f"{tmp_path}/quickstart/sft/final"
    assert not any(p.skip or p.conflicts for p in plans)


def _complete(p: pipeline.StagePlan) -> None:
    out = Path(p.config.output_dir)
    out.mkdir(parents=True)
    (out / "fingerprint.json").write_text(
        json.dumps({"fingerprint": p.fingerprint, "spec": p.spec})
    )
    (out / "result.json").write_text(json.dumps({"output": str(out / "final"), "steps": 3}))


def test_completed_stages_are_skipped_and_changes_are_reported(tmp_path) -> None:
    first = pipeline.plan(quickstart(), QUICKSTART, tmp_path, 1, None)
    _complete(first[0])
    again = pipeline.plan(quickstart(), QUICKSTART, tmp_path, 1, None)
    assert [p.skip for p in again] == [True, False, False]

    changed = pipeline.plan(quickstart(source="other.txt"), QUICKSTART, tmp_path, 1, None)
    assert changed[0].conflicts == [
        f"stage.dataset.source: '{ROOT}/examples/quickstart/corpus.txt' -> 'other.txt'"
    ]
    assert not changed[0].skip


def test_a_changed_stage_refuses_to_run(tmp_path) -> None:
    _complete(pipeline.plan(quickstart(), QUICKSTART, tmp_path, 1, None)[0])
    try:
        pipeline.run_job(quickstart(maxSamples=10), QUICKSTART, tmp_path)
    except pipeline.RunError as e:
        assert e.code == 2
        assert e.lines[0].startswith("stage pretrain changed since it ran")
        assert "stage.dataset.maxSamples: None -> 10" in e.lines[0]
    else:
        raise AssertionError("a changed stage must not run")


def test_report_from_stage_directories(tmp_path) -> None:
    plans = pipeline.plan(quickstart(), QUICKSTART, tmp_path, 1, None)
    cfg = plans[0].config
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    rows = [{"step": s, "loss": 5.0 / s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 1.5}]
    (out / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{cut")
    result = {"steps": 5, "output": "x", "tokens_per_second": 9.0, "final_loss": 1.0}
    (out / "result.json").write_text(json.dumps({**result, "best_loss": 0.9}))
    (out / "run.json").write_text(json.dumps({"started": 100.0, "finished": 112.5}))
    report = write_report(tmp_path / "quickstart", [cfg])
    (stage,) = report["stages"]
    assert stage["final_loss"] == 1.0 and stage["best_loss"] == 0.9  # the stage's own
    assert stage["final_eval_loss"] == 1.5 and stage["duration_seconds"] == 12.5
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "quickstart" / "report.md").read_text()
    assert "| pretrain | pretrain | 12.5 | 5 | 1.0000 | 0.9000 | 9 | x |" in md
    assert "![pretrain loss](pretrain/loss.png)" in md


def test_report_plots_the_alignment_metrics_a_stage_logged(tmp_path) -> None:
    plans = pipeline.plan(quickstart(), QUICKSTART, tmp_path, 1, None)
    dpo = plans[2].config
    out = Path(dpo.output_dir)
    out.mkdir(parents=True)
    # DPOTrainer's names; a PPO stage would log objective/kl and objective/scores instead.
    rows = [
        {
            "step": s,
            "loss": 0.7 - 0.05 * s,
            "rewards/margins": 0.1 * s,
            "rewards/accuracies": min(1.0, 0.5 + 0.1 * s),
            "eval_rewards/accuracies": 0.2,
        }
        for s in range(1, 6)
    ]
    (out / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    report = write_report(tmp_path / "quickstart", [dpo])
    (stage,) = report["stages"]
    assert stage["alignment"] == {"preference accuracy": 1.0, "preference margin": 0.5}
    assert (out / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "quickstart" / "report.md").read_text()
    assert "Final preference accuracy: 1, preference margin: 0.5" in md
    assert "![dpo alignment metrics](dpo/alignment.png)" in md
    # A stage that logs none gets no such plot.
    plain = write_report(tmp_path / "other", [plans[0].config])["stages"][0]
    assert plain["alignment"] == {} and plain["alignment_plot"] is None


def test_an_adapters_base_is_found_on_storage_mounted_elsewhere(tmp_path) -> None:
    """A dpo adapter names its base as the pod saw it (/storage/job/sft/final); on the
    PVC's directory on another machine the same base is found next to the adapter."""
    from llmtrain.trainer.models import adapter_base

    sft, dpo = tmp_path / "pv" / "job" / "sft" / "final", tmp_path / "pv" / "job" / "dpo" / "final"
    sft.mkdir(parents=True)
    dpo.mkdir(parents=True)
    (dpo / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/storage/job/sft/final"})
    )
    assert adapter_base(str(dpo)) == str(sft.resolve())
    (dpo / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    assert adapter_base(str(dpo)) == "org/base"  # a hub id stays one
