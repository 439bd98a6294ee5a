"""The initializer and its preflight on real data and the tiny tokenizer: what a job's broken
dataset or chat template looks like before any GPU is held, and a fetch from a real S3 server.

    pytest tests/trainer/test_preflight.py -x -q

`llmtrain initialize` runs once as a subprocess (the CLI and its exit code, as a pod runs it);
the other cases call `initializer.run`, the same function, in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from llmtrain.trainer import initializer, inputs
from llmtrain.trainer.contract import ExitCode

from .helpers import Assets, stage_config

LLMTRAIN = Path(sys.executable).parent / "llmtrain"


def _init(tmp: Path, *configs: Any, gpu_memory: int | None = None) -> Path:
    init = inputs.plan(list(configs), str(tmp / "storage"), "tiny", gpu_memory=gpu_memory)
    init.device = "cpu"
    path = tmp / inputs.JOB_CONFIG
    path.write_text(init.model_dump_json(by_alias=True))
    return path


def _chat(assets: Assets, tmp: Path, source: Path | str, **hp: Any) -> Any:
    return stage_config(
        assets, tmp / "sft", "sft", {"source": str(source), "format": "messages"},
        hyperparameters=hp or None,
    )  # fmt: skip


def test_initialize_reports_the_figures(assets: Assets, tmp_path: Path) -> None:
    chat = _chat(assets, tmp_path, assets.chats, maxSeqLength=48)
    pairs = stage_config(
        assets, tmp_path / "qa", "sft",
        {"source": str(assets.instructions), "format": "prompt-completion"},
    )  # fmt: skip
    log = tmp_path / "termination-log"
    cmd = [str(LLMTRAIN), "initialize", "--job-config", str(_init(tmp_path, chat, pairs))]
    proc = subprocess.run([*cmd, "--termination-log", str(log)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "storage/tiny/_init/result.json").read_text())
    assert result["ok"] and not result["problems"]
    sft = result["stages"][0]
    assert sft["kept"] > 200 and sft["heldOut"] > 0
    # Two-exchange chats are longer than 48 tokens: truncated, as training will.
    assert sft["truncated"] > 0
    tokens = sft["tokens"]
    assert 0 < tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"] == 48
    assert sft["memory"]["total"] > sft["memory"]["weights"] > 0
    # What the operator reads from the pod: compact figures.
    message = json.loads(log.read_text())
    assert message["stages"][0]["stage"] == "sft"
    assert message["stages"][0]["memoryBytes"] == sft["memory"]["total"]
    assert message["stages"][1]["tokensMax"] <= 64


def test_broken_json_and_missing_columns_are_permanent_with_the_path(
    assets: Assets, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jsonl"
    lines = assets.chats.read_text().splitlines()[:20]
    broken.write_text("\n".join([*lines[:5], '{"messages": [', *lines[5:]]) + "\n")
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(10)))
    log = tmp_path / "termination-log"
    config = _init(
        tmp_path,
        _chat(assets, tmp_path, broken),
        stage_config(assets, tmp_path / "two", "sft", {"source": str(texts), "format": "messages"}),
    )
    code, problems = initializer.run(config, log)
    assert code == ExitCode.PERMANENT
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"spec.stages[0].dataset: {broken}"), problems
    assert problems[1].startswith("spec.stages[1].dataset: ") and "['messages']" in problems[1]
    assert "['text']" in problems[1]  # what the data has
    assert log.read_text().splitlines() == problems


def test_an_all_masked_chat_example_is_named_by_its_row(assets: Assets, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in assets.chats.read_text().splitlines()[:30]]
    # Row 7 has no assistant turn: its loss mask would be empty, it would train on nothing.
    rows[7]["messages"] = [m for m in rows[7]["messages"] if m["role"] != "assistant"]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, problems = initializer.run(_init(tmp_path, _chat(assets, tmp_path, data)))
    assert code == ExitCode.PERMANENT
    assert problems == [
        f"spec.stages[0].dataset: {data}[train] row(s) 7: the assistant mask is empty "
        "(no assistant reply the chat template marks for the loss)"
    ]


def test_a_template_without_generation_marks_fails(assets: Assets, tmp_path: Path) -> None:
    tok = tmp_path / "tokenizer"
    subprocess.run(["cp", "-r", str(assets.tokenizer), str(tok)], check=True)
    cfg_file = tok / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    template = cfg.get("chat_template") or (tok / "chat_template.jinja").read_text()
    plain = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    if "chat_template" in cfg:
        cfg["chat_template"] = plain
        cfg_file.write_text(json.dumps(cfg))
    else:
        (tok / "chat_template.jinja").write_text(plain)
    sft = _chat(assets, tmp_path, assets.chats)
    sft.model.tokenizer.source = str(tok)
    code, problems = initializer.run(_init(tmp_path, sft))
    assert code == ExitCode.PERMANENT
    assert any("{% generation %}" in p and p.startswith("spec.stages[0]") for p in problems)


def test_a_stage_too_big_for_the_gpu_fails_with_the_numbers(assets: Assets, tmp_path: Path) -> None:
    code, problems = initializer.run(
        _init(tmp_path, _chat(assets, tmp_path, assets.chats), gpu_memory=2**20)
    )
    assert code == ExitCode.PERMANENT
    assert len(problems) == 1 and problems[0].startswith("spec.stages[0]: needs an estimated ")
    assert "more than the 0.00 GiB a GPU has (batchSize 8 x1, maxSeqLength 64" in problems[0]


def test_the_initializer_fetches_a_dataset_from_s3(assets: Assets, tmp_path: Path, s3: Any) -> None:
    """A real SeaweedFS bucket: the dataset is copied to storage, the stage reads the copy."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(bucket)
    fs = s3.filesystem()
    with fs.open_output_stream(f"{bucket}/data/chats.jsonl") as f:
        f.write(assets.chats.read_bytes())
    uri = f"s3://{bucket}/data/chats.jsonl"
    init = inputs.plan([_chat(assets, tmp_path, uri)], str(tmp_path / "st"), "tiny")
    init.device = "cpu"
    (fetch,) = init.fetches
    assert (
        fetch.dest == f"{tmp_path}/st/tiny/_init/datasets/{bucket}--data--chats.jsonl/chats.jsonl"
    )
    assert init.stages[0].stage.dataset.source == fetch.dest  # the GPU pods read the copy
    config = tmp_path / "init.json"
    config.write_text(init.model_dump_json())
    env = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": s3.endpoint}
    cmd = [str(LLMTRAIN), "initialize", "--job-config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(fetch.dest).read_bytes() == assets.chats.read_bytes()
    result = json.loads(Path(init.result).read_text())
    assert result["ok"] and result["stages"][0]["kept"] > 200
    # A missing object is the job's own mistake, with the field that names it.
    init.fetches[0].source = f"s3://{bucket}/data/missing.jsonl"
    init.fetches[0].dest += ".missing"
    config.write_text(init.model_dump_json())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == ExitCode.PERMANENT
    assert "spec.stages[0].dataset.source: s3://" in proc.stderr and "no such object" in proc.stderr


def test_llmtrain_run_stops_at_the_preflight_before_any_stage(
    assets: Assets, tmp_path: Path
) -> None:
    import yaml

    from llmtrain.trainer import tiny

    rows = [json.loads(line) for line in assets.chats.read_text().splitlines()[:20]]
    rows[3]["messages"] = rows[3]["messages"][:2]  # system + user: nothing to learn
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = {
        "apiVersion": "llmtrain.io/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": "pf"},
        "spec": {
            "model": {
                "architecture": tiny.ARCHITECTURE,
                "tokenizer": {"source": str(assets.tokenizer)},
            },
            "stages": [
                {
                    "name": "sft",
                    "type": "sft",
                    "dataset": {"source": str(data), "format": "messages"},
                }
            ],
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    proc = subprocess.run(
        [str(LLMTRAIN), "run", str(tmp_path / "job.yaml"), "--workdir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == ExitCode.PERMANENT, proc.stdout + proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "preflight failed:" in out and "spec.stages[0].dataset:" in out and "row(s) 3" in out
    assert not (tmp_path / "runs/pf/sft/stage.json").exists()  # no stage started
