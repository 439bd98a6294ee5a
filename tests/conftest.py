"""Shared fixtures: the repo root and the `llmtrain` CLI as a subprocess; the two CI lanes.

Under `pytest -n 2` tests are scheduled by lane (their path), so the tests that mostly wait on
an apiserver share one worker while the tests that keep both cores busy training share the
other; each lane starts its own session fixtures once (`make test` runs one process for now).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every Ray a test starts stays on loopback (Ray binds the host's address otherwise); it is
# read when ray is first imported, and child processes inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


# Tests that train on the CPU (or run pods that do); everything else mostly waits on a cluster.
TRAIN_LANE = (
    "tests/trainer/",
    "tests/unit/",
    "benchmarks/",
    "tests/e2e/",
)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n 2`, each lane is one unit of work for one worker (xdist's own loadgroup does
    not work with pytest 9, whose node ids it can no longer suffix)."""
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "train" if nodeid.startswith(TRAIN_LANE) else "cluster"

    return Lanes(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under `-n 2`, the training lane yields the CPU to the cluster lane: an apiserver, an
    operator or kwok held up past a test's timeout fails it, training held up only takes
    longer. The processes it starts (Ray, `llmtrain`) inherit the niceness."""
    if os.environ.get("PYTEST_XDIST_WORKER") and item.nodeid.startswith(TRAIN_LANE):
        os.nice(max(0, 10 - os.nice(0)))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600, **env: str):
    """Run `llmtrain ARGS` as users do: a separate process, real exit code and output."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "llmtrain"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS, tests/s3server.py) on loopback, once per session; its
    binary is built from the Go module proxy on first use (tests/s3/build.sh, then cached).
    Without Go the tests that use it are skipped, except under CI=true, where they fail."""
    from tests import s3server

    ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
    try:
        bin_dir = s3server.build()
    except s3server.GoMissing as e:
        if ci:
            pytest.fail(f"CI=true and the S3 server cannot be built: {e}", pytrace=False)
        pytest.skip(f"needs Go to build the S3 server (tests/s3/build.sh): {e}")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"tests/s3/build.sh failed:\n{(e.stderr or '')[-6000:]}", pytrace=False)
    server = s3server.S3Server(bin_dir, tmp_path_factory.mktemp("s3"))
    with server:
        yield server
