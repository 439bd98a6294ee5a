"""docs/contracts.md §6 states the exit codes of llmtrain.trainer.contract; this keeps them equal.

pytest tests/unit/test_contract_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

from llmtrain.trainer.contract import ExitCode, retryable

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def test_exit_code_table_matches_the_contract() -> None:
    section = DOC.read_text().split("## 6. Exit codes", 1)[1]
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(\d+)` \|[^|]*\|[^|]*\| (.*) \|$", section, re.M)
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
