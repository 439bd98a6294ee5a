"""The job's initializer: fetch what the stages need to shared storage, once, then run the
preflight. One CPU-only pod before any GPU is held (the operator), or a step of `llmtrain run`.

    llmtrain initialize --job-config /etc/llmtrain/init.json
    code, problems = initializer.run(Path("init.json"))   # what the CLI wraps

Fetches (inputs.Fetch): a hub model with `snapshot_download` (revision, HF_TOKEN), a hub
dataset with `datasets.load_dataset` and `save_to_disk`, an `s3://` object or prefix with
the object store's client (endpoint from AWS_ENDPOINT_URL, keys from AWS_*). Each lands
beside its destination and is renamed into place, so a retried initializer skips what is
there. Then preflight.check; the verdict goes to `{output_dir}/result.json` and to the
termination log (the operator reads it from the pod's status): the problems, one a line,
or the figures as compact JSON. Exit codes follow contract.ExitCode: PERMANENT for the
job's own mistakes, RETRYABLE for a store or hub that did not answer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmtrain.trainer import inputs
from llmtrain.trainer.contract import (
    RESULT,
    ExitCode,
    StageConfig,
    hub_token,
    read_json,
    write_json,
)
from llmtrain.trainer.inputs import TERMINATION_MAX, Fetch, InitConfig

log = logging.getLogger("llmtrain.initializer")


class Retry(Exception):
    """The source could not be read now (network, throttling): a retry may succeed."""


def run(path: Path, termination_log: Path | None = None) -> tuple[int, list[str]]:
    """Fetch and check; (exit code, problems)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        init = InitConfig.model_validate_json(path.read_text())
    except OSError as e:
        return ExitCode.PERMANENT, [f"{path}: cannot read: {e.strerror}"]
    except ValidationError as e:
        return ExitCode.PERMANENT, [
            f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        ]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    problems: list[str] = []
    try:
        for f in init.fetches:
            why = fetch(f)
            if why:
                problems.append(f"{f.where}: {why}")
    except Retry as e:
        _verdict(init, termination_log, [str(e)], [])
        return ExitCode.RETRYABLE, [str(e)]
    figures: list[dict[str, Any]] = []
    if not problems:
        from llmtrain.trainer import preflight

        problems, figures = preflight.check(init)
    _verdict(init, termination_log, problems, figures)
    for fig in figures:
        log.info("preflight %s: %s", fig["stage"], json.dumps(fig))
    return (ExitCode.PERMANENT if problems else ExitCode.SUCCEEDED), problems


def summary(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures, compact: what the termination message carries into the job status."""
    out = []
    for f in figures:
        row: dict[str, Any] = {k: f[k] for k in ("stage", "kept", "truncated") if k in f}
        row["dropped"] = sum(f.get("dropped", {}).values())
        row.update({f"tokens{k.title()}": v for k, v in (f.get("tokens") or {}).items()})
        if f.get("memory"):
            row["memoryBytes"] = f["memory"]["total"]
        out.append(row)
    return {"stages": out}


def _verdict(
    init: InitConfig, termination_log: Path | None, problems: list[str], figures: list[Any]
) -> None:
    out = Path(init.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(Path(init.result), {"ok": not problems, "problems": problems, "stages": figures})
    if termination_log is None or not termination_log.parent.is_dir():
        return
    text = "\n".join(problems) if problems else json.dumps(summary(figures), separators=(",", ":"))
    data = text.encode()[:TERMINATION_MAX]
    try:
        termination_log.write_bytes(data)
    except OSError as e:  # the verdict is in result.json and the logs anyway
        log.warning("cannot write %s: %s", termination_log, e)


def fetch(f: Fetch) -> str | None:
    """Copy one source to `f.dest` unless it is there; why it cannot be, if it cannot."""
    dest = Path(f.dest)
    if dest.exists():
        log.info("%s: already at %s", f.source, dest)
        return None
    tmp = dest.with_name(f".{dest.name}.fetch")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s %s to %s", f.kind, f.source, dest)
    if f.source.startswith("s3://"):
        why = _s3(f.source, dest)
        if why:
            return why
    else:
        why = _hub_model(f, tmp) if f.kind == "model" else _hub_dataset(f, tmp)
        if why:
            return why
        os.replace(tmp, dest)
    return None


def _s3(uri: str, dest: Path) -> str | None:
    from llmtrain.trainer import objectstore
    from llmtrain.trainer.contract import ObjectStoreConfig

    bucket, _ = objectstore.split(uri)
    config = ObjectStoreConfig(uri=f"s3://{bucket}", endpoint=os.environ.get("AWS_ENDPOINT_URL"))
    try:
        found = objectstore.connect(config).download(uri, dest)  # renamed into place
    except objectstore.StoreError as e:
        return str(e)
    except OSError as e:
        raise Retry(f"{uri}: {e}") from e
    return None if found else f"{uri}: no such object or prefix"


def _hub_model(f: Fetch, tmp: Path) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        snapshot_download(f.source, revision=f.revision, token=hub_token(), local_dir=tmp)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
        return f"{f.source}: {type(e).__name__}: {str(e).splitlines()[0]}"
    except OSError as e:  # the hub did not answer (HF_HUB_OFFLINE, network)
        raise Retry(f"{f.source}: {e}") from e
    return None


def _hub_dataset(f: Fetch, tmp: Path) -> str | None:
    import datasets

    try:
        parts = {
            s: datasets.load_dataset(f.source, f.name, split=s, token=hub_token()) for s in f.splits
        }
    except datasets.exceptions.DatasetNotFoundError as e:
        return f"{f.source}: {e}"
    except (ValueError, KeyError) as e:  # no such split or configuration
        return f"{f.source}: {e}"
    except OSError as e:
        raise Retry(f"{f.source}: {e}") from e
    datasets.DatasetDict(parts).save_to_disk(str(tmp))
    return None


def local(
    configs: list[StageConfig], storage_root: Path, job: str, namespace: str
) -> list[StageConfig]:
    """`llmtrain run`'s initializer: the same `llmtrain initialize`, as a child process (the
    runner never imports torch); returns the stage configs reading the fetched copies, or
    raises InitializeFailed with the preflight's problems."""
    init = inputs.plan(configs, str(storage_root), job, namespace, device="cpu")
    out = Path(init.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / inputs.JOB_CONFIG
    path.write_text(init.model_dump_json(by_alias=True, indent=2))
    script = Path(sys.executable).parent / "llmtrain"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "llmtrain.cli.main"]
    with (out / "initializer.log").open("w") as log_file:
        code = subprocess.call(
            [*base, "initialize", "--job-config", str(path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    if code:
        problems = read_json(Path(init.result)).get("problems") or []
        raise InitializeFailed(code, problems or [f"see {out / 'initializer.log'}"])
    return init.stages


class InitializeFailed(Exception):
    def __init__(self, code: int, problems: list[str]):
        super().__init__("\n".join(problems))
        self.code, self.problems = code, problems


def report_lines(job_dir: Path) -> list[str]:
    """## Preflight for report.md: per stage, examples kept and dropped, token percentiles,
    the memory estimate (from the initializer's result.json)."""
    stages = read_json(job_dir / inputs.INIT_DIR / RESULT).get("stages") or []
    if not stages:
        return []
    out = [
        "## Preflight",
        "",
        "| stage | kept | dropped | truncated | tokens p50 / p90 / p99 / max | memory per worker |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in stages:
        dropped = ", ".join(f"{k} {v}" for k, v in (s.get("dropped") or {}).items() if v) or "0"
        tok = s.get("tokens") or {}
        lengths = " / ".join(str(tok.get(k, "-")) for k in ("p50", "p90", "p99", "max"))
        mem = s.get("memory") or {}
        est = f"{mem['total'] / 2**30:.2f} GiB" if mem else "-"
        out.append(
            f"| {s['stage']} | {s.get('kept', '-')} | {dropped} | {s.get('truncated', '-')} "
            f"| {lengths} | {est} |"
        )
    return [*out, ""]
