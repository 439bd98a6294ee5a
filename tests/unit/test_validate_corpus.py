"""`llmtrain validate` refuses every manifest of tests/corpus/bad, naming the field, and
accepts every example. The real apiserver gets the same files in
tests/cluster/test_validation_parity.py, so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.corpus import Case, bad_cases, good_files


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c.name)
def test_validate_refuses_and_names_the_field(case: Case) -> None:
    r = run_cli("validate", str(case.path))
    assert r.returncode == 1, f"{case.name} ({case.why}) was accepted:\n{r.stdout}"
    assert case.expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    cases = [
        c
        for c in bad_cases()
        if c.path.read_text().count("\n---") == 0
        and "appears twice" not in c.expect
        and c.expect != "kind"
    ]
    r = run_cli("validate", *(str(c.path) for c in cases))
    assert r.returncode == 1
    assert f"{len(cases)} problem(s) found" in r.stderr, r.stderr


@pytest.mark.parametrize("path", good_files(), ids=lambda p: p.name)
def test_validate_accepts_the_examples(path: Path) -> None:
    r = run_cli("validate", str(path))
    assert r.returncode == 0, r.stderr
