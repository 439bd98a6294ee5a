"""`llmtrain validate` and the real apiserver agree: every manifest of tests/corpus/bad is
refused by both, each naming the field, and every example is accepted by both.

    pytest -m cluster tests/cluster/test_validation_parity.py

The server side is `kubectl apply --server-side --dry-run=server`, as GitOps tools apply:
the generated CRD's schema and CEL rules, strict field validation, kubectl's own parsing.
tests/unit/test_validate_corpus.py runs the same files through `llmtrain validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import controlplane
from tests.conftest import run_cli
from tests.corpus import Case, bad_cases, good_files

pytestmark = [pytest.mark.cluster]


def server_apply(cluster: Any, path: Path, namespace: str) -> tuple[bool, str]:
    """(accepted, what kubectl said)."""
    argv = ["--server-side", "--dry-run=server", "-n", namespace, "-f", str(path)]
    try:
        return True, cluster.kubectl("apply", *argv)
    except controlplane.KubectlError as e:
        return False, e.stderr


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c.name)
def test_both_refuse(cluster: Any, llmtj_crd: Any, namespace: str, case: Case) -> None:
    accepted, out = server_apply(cluster, case.path, namespace)
    local = run_cli("validate", str(case.path))
    assert local.returncode == 1 and case.expect in local.stderr, local.stderr
    if case.server_accepts:  # the documented difference: kubectl's YAML keeps the last value
        assert accepted, f"kubectl now refuses {case.name}: drop its `# server: accepted` line"
        return
    assert not accepted, f"the apiserver accepted {case.name} ({case.why})"
    assert case.server in out, out


@pytest.mark.parametrize("path", good_files(), ids=lambda p: p.name)
def test_both_accept_the_examples(cluster: Any, llmtj_crd: Any, namespace: str, path: Path) -> None:
    accepted, out = server_apply(cluster, path, namespace)
    assert accepted, out
    assert run_cli("validate", str(path)).returncode == 0
