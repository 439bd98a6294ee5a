"""Session fixtures for the trainer tests: tiny local assets and one shared local Ray.

Everything is built from `llmtrain.trainer.tiny` into a temp dir (no hub access): a byte-level
BPE tokenizer with a {% generation %} chat template, a 2-layer Llama (hidden 64, vocab 400),
a text corpus, prompt/completion pairs and chats. Ray starts once per session (about 10 s on
2 cores); each stage run still pays Ray Train's worker start-up (30-40 s on 2 cores), so
tests share runs where they can (see `pretrained`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from .helpers import Assets, Run, Scraper, build_assets, free_port, pretrain_config


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return build_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def ray_cluster() -> Any:
    """One local Ray for the session; its address lets subprocesses join it."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ray gives its raylet 30 s to register (ray/_private/node.py, fixed); beside the other
    # CI lane's control plane that can pass, so a second and third try.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def pretrained(assets: Assets, ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Pretrain the tiny architecture from scratch once, on Ray, scraping /metrics meanwhile.

    Shared by the pretraining, metrics and resume tests (the resume test's reference run).
    """
    from llmtrain.trainer import engine

    port = free_port()
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    cfg = pretrain_config(assets, out, metrics_port=port)
    scraper = Scraper(port)
    started = time.time()
    try:
        result = engine.run(cfg)
    finally:
        scraper.stop()
    return Run(cfg, out, result, time.time() - started, scraper.page)
