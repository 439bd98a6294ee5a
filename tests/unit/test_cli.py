"""`llmtrain` as a user runs it: exit codes, one line per problem, no tracebacks."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def test_validate_examples(root) -> None:
    examples = sorted((root / "examples").glob("*.yaml"))
    assert len(examples) >= 4  # quickstart, chat, qlora, gated pipeline
    r = run_cli("validate", *map(str, examples))
    assert r.returncode == 0, r.stderr
    assert f"{len(examples)} job(s) valid" in r.stdout


def test_validate_reports_each_problem_on_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
apiVersion: llmtrain.io/v1alpha1
kind: LLMTrainingJob
metadata: {name: x}
spec:
  model: {source: m}
  stages:
  - {name: a, type: sft, dataset: {source: d, format: prompt-completion}, peft: {r: 0}}
  - {name: b, type: laser, dataset: {source: d, format: text}}
---
apiVersion: v1
kind: Secret
metadata: {name: ignored}
"""
    )
    r = run_cli("validate", str(bad))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"error {bad}#1: spec.stages[0].peft.r: must be greater than 0"
    assert lines[1].startswith(f"error {bad}#1: spec.stages[1].type: must be 'pretrain', 'sft'")
    assert lines[-1] == "error 2 problem(s) found"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: [unclosed", ":1:13: invalid YAML"),
        ("- just\n- a list\n", "(document): must be a mapping"),
        ("kind: ConfigMap\n", "no LLMTrainingJob document found"),
    ],
)
def test_validate_odd_files(tmp_path, text, expected) -> None:
    f = tmp_path / "odd.yaml"
    f.write_text(text)
    r = run_cli("validate", str(f))
    assert r.returncode == 1 and expected in r.stderr and "Traceback" not in r.stderr


def test_missing_file_is_a_clean_error(tmp_path) -> None:
    r = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and "cannot read: No such file or directory" in r.stderr


def test_version_and_help_on_every_command() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("llmtrain 0.")
    from llmtrain.cli.main import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"validate", "crd"} <= set(names)
    for name in names:
        r = run_cli(name, "--help")
        assert r.returncode == 0 and "Usage: llmtrain" in r.stdout, name


def test_crd_check_detects_drift(tmp_path, root) -> None:
    assert run_cli("crd", "--root", str(tmp_path)).returncode == 0
    assert run_cli("crd", "--check", "--root", str(tmp_path)).returncode == 0
    (tmp_path / "crds" / "llmtrainingjobs.yaml").write_text("stale")
    r = run_cli("crd", "--check", "--root", str(tmp_path))
    assert r.returncode == 1 and "out of date" in r.stderr
