"""Shared fixtures: the repo root and the `llmtrain` CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every Ray a test starts stays on loopback (Ray binds the host's address otherwise); it is
# read when ray is first imported, and child processes inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
