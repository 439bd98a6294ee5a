"""Fixtures for the monitoring tests: promtool and prometheus from Debian's `prometheus`.

tests/monitoring/install-prometheus.sh installs them (`make tools` runs it). Without them the
tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.chart.chart import skip_or_fail


def _tool(name: str) -> Path:
    found = shutil.which(name)
    if not found:
        skip_or_fail(f"{name} not found: run tests/monitoring/install-prometheus.sh")
    assert found
    return Path(found)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return _tool("prometheus")
