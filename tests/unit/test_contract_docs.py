"""docs/contracts.md states llmtrain.trainer.contract for users; this keeps the two equal:
§2 the environment variables, §3 the stage directory's names, §4 the driver's metrics (names,
types, the `rank` label, the progress fields they feed) and §6 the exit codes.

pytest tests/unit/test_contract_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic.alias_generators import to_camel

from llmtrain.trainer import contract
from llmtrain.trainer.contract import DRIVER_METRICS, PROGRESS_METRICS, ExitCode, retryable

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def section(number: int) -> str:
    """The text of §`number`, up to the next section."""
    return DOC.read_text().split(f"\n## {number}. ", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of the markdown tables in `text`."""
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows if not set(row[0]) <= {"-", " "}][1:]


def test_environment_table_matches_the_contract() -> None:
    names = {m for row in table_rows(section(2)) for m in re.findall(r"`([A-Z_]+)`", row[0])}
    assert names == {
        contract.ENV_RAY_ADDRESS,
        contract.ENV_HF_TOKEN,
        contract.ENV_AWS_ACCESS_KEY_ID,
        contract.ENV_AWS_SECRET_ACCESS_KEY,
        contract.ENV_AWS_SESSION_TOKEN,
    }


def test_stage_directory_table_names_the_contract_paths() -> None:
    text = section(3)
    paths = {row[0] for row in table_rows(text)}
    for name in (contract.FINAL, contract.MERGED, contract.PREPARED):
        assert f"`{name}/`" in paths, name
    for name in (contract.PROGRESS, contract.METRICS, contract.RESULT, contract.STOP_FILE):
        assert f"`{name}`" in paths, name
    assert contract.checkpoint_name(7) == "checkpoint-7"
    assert f"`{contract.CHECKPOINTS}/checkpoint-{{step}}/`" in paths
    assert f"`{contract.CHECKPOINTS}/{contract.STAGING}/`" in paths
    assert f"`{contract.COMPLETE}`" in text
    fields = ", ".join(contract.Progress.model_fields)
    assert f"`{{{fields}, updated_at}}`" in text  # progress.json's shape


def test_metric_table_matches_the_contract() -> None:
    documented: dict[str, tuple[str, str]] = {}
    for name_cell, kind, meaning in table_rows(section(4)):
        for name in re.findall(r"`(llmtrain_[a-z0-9_]+)`", name_cell):
            documented[name] = (kind, meaning)
    assert set(documented) == {m.name for m in DRIVER_METRICS}
    for m in DRIVER_METRICS:
        kind, meaning = documented[m.name]
        assert kind == m.type, m.name
        assert ("`rank`" in meaning) == m.per_rank, m.name
        # → marks what feeds the job status's progress, by its camelCase name
        field = PROGRESS_METRICS.get(m.name)
        arrow = re.search(r"\(→ `(\w+)`\)", meaning)
        assert (arrow.group(1) if arrow else None) == (field and to_camel(field)), m.name


def test_exit_code_table_matches_the_contract() -> None:
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(\d+)` \|[^|]*\|[^|]*\| (.*) \|$", section(6), re.M)
    }
    assert set(rows) == {str(int(c)) for c in ExitCode}
    for code in ExitCode:
        action = rows[str(int(code))]
        if code == ExitCode.SUCCEEDED:
            assert action == "next stage"
        elif retryable(code):
            assert action == "retry", (code, action)
        else:
            assert action.startswith("fail the job"), (code, action)
