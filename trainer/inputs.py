"""What a job's initializer fetches, where it puts it, and the file it runs from. Pure pydantic,
shared by the operator (which writes the file into a ConfigMap) and the local runner.

    init = inputs.plan(configs, storage_root="/storage", job="chat", gpu_memory=80 * 2**30)
    init.stages        # the stage configs as the GPU pods get them: sources on storage
    init.fetches       # [Fetch(source="org/base", dest="/storage/chat/_init/model/org--base")]
    # `llmtrain initialize --job-config F` fetches them, runs the preflight, writes init.result

A source is fetched when the GPU pods could not read it from storage: a hub id (`org/name`)
or an `s3://` URI. Absolute paths (a PVC, the local disk) are read in place. Fetched copies
live under `{storage}/{job}/_init/` (an underscore: no stage can be called that), so every
stage, and every retry, loads them from storage instead of the hub.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from llmtrain.trainer.config import Model
from llmtrain.trainer.contract import RESULT, StageConfig

INIT_DIR = "_init"
JOB_CONFIG = "init.json"  # the file name `llmtrain initialize --job-config` reads
# The kubelet's default terminationMessagePath: the initializer's verdict for the operator.
TERMINATION_LOG = "/dev/termination-log"
# A termination message is cut at 4096 bytes by the kubelet.
TERMINATION_MAX = 4096


class Fetch(Model):
    kind: Literal["model", "dataset"] = Field(description="What is fetched.")
    source: str = Field(description="Hub id or s3:// URI, as the job names it.")
    dest: str = Field(description="Where the copy goes, on shared storage.")
    revision: str | None = Field(None, description="Hub revision.")
    name: str | None = Field(None, description="Hub dataset configuration name.")
    splits: list[str] = Field(default_factory=list, description="Dataset splits to keep.")
    where: str = Field(description="The job field that names the source.")


class InitConfig(Model):
    job: str = Field(description="Job name.")
    namespace: str = Field("default", description="Job namespace.")
    output_dir: str = Field(description="The initializer's directory: fetched inputs, result.")
    stages: list[StageConfig] = Field(description="Each stage as its GPU pods will run it.")
    fetches: list[Fetch] = Field(default_factory=list, description="Inputs to copy to storage.")
    gpu_memory: int | None = Field(
        None, ge=0, description="Bytes of memory per GPU; an estimate above it fails the job."
    )
    device: Literal["cuda", "cpu"] = Field(
        "cuda", description="Where the stages train: the memory estimate's dtypes follow it."
    )

    @property
    def result(self) -> str:
        return f"{self.output_dir}/{RESULT}"


def init_dir(storage_root: str, job: str) -> str:
    return f"{storage_root.rstrip('/')}/{job}/{INIT_DIR}"


def remote(source: str | None) -> bool:
    """True for what the GPU pods cannot read in place: an s3:// URI or a hub id."""
    if not source:
        return False
    if source.startswith("s3://"):
        return True
    return "://" not in source and not source.startswith(("/", "./", "../", "~"))


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_FILE = re.compile(r"\.(jsonl|json|parquet|csv|txt|text)$")


def _dest(root: str, kind: str, source: str, revision: str | None) -> str:
    """A stable folder per source (and revision); an s3:// file keeps its name, which tells
    the loader its format."""
    body = source.removeprefix("s3://").rstrip("/")
    slug = _SLUG.sub("--", body.replace("/", "--"))
    if revision:
        slug += f"@{_SLUG.sub('-', revision)}"
    dest = f"{root}/{kind}s/{slug}"
    if source.startswith("s3://") and _FILE.search(body):
        dest += "/" + body.rsplit("/", 1)[-1]
    return dest


def plan(
    configs: list[StageConfig],
    storage_root: str,
    job: str,
    namespace: str = "default",
    gpu_memory: int | None = None,
    device: Literal["cuda", "cpu"] = "cuda",
) -> InitConfig:
    """The initializer's work for these stages, and the stages rewritten to read its copies."""
    root = init_dir(storage_root, job)
    fetches: dict[tuple[str, str, str | None, str | None], Fetch] = {}

    def fetch(kind: str, source: str, where: str, revision: str | None = None, **kw: str) -> str:
        key = (kind, source, revision, kw.get("name"))
        if key not in fetches:
            dest = _dest(
                root, kind, source + (f"/{kw['name']}" if kw.get("name") else ""), revision
            )
            fetches[key] = Fetch.model_validate(
                {"kind": kind, "source": source, "dest": dest, "revision": revision,
                 "where": where, **kw}
            )  # fmt: skip
        return fetches[key].dest

    out = []
    for i, cfg in enumerate(configs):
        cfg = cfg.model_copy(deep=True)
        model, base = cfg.model, cfg.model.source
        if remote(base):
            assert base is not None
            path = fetch("model", base, "spec.model.source", model.revision)
            if cfg.input_model == base:
                cfg.input_model = path
            model.source, model.revision = path, None
        tok = model.tokenizer
        if remote(tok.source):
            assert tok.source is not None
            tok.source = fetch("model", tok.source, "spec.model.tokenizer.source", tok.revision)
            tok.revision = None
        ds = cfg.stage.dataset
        if remote(ds.source):
            where = f"spec.stages[{i}].dataset.source"
            splits = [s for s in (ds.split, ds.eval_split) if s]
            kw = {"name": ds.name} if ds.name else {}
            dest = fetch("dataset", ds.source, where, **kw)
            fetches[("dataset", ds.source, None, ds.name)].splits = sorted(
                {*fetches[("dataset", ds.source, None, ds.name)].splits, *splits}
            )
            ds.source, ds.name = dest, None
        out.append(cfg)
    return InitConfig(
        job=job,
        namespace=namespace,
        output_dir=root,
        stages=out,
        fetches=list(fetches.values()),
        gpu_memory=gpu_memory,
        device=device,
    )
