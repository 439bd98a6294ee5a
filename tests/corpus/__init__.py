"""Manifests that both `llmtrain validate` and the apiserver must refuse (bad/), with the
field each must name, and the examples both must accept.

    for case in bad_cases(): case.path, case.expect, case.why

Each file in bad/ starts with `# path: <what the error names>` and `# <why it is bad>`; a
third line `# server: <text>` says what the server's refusal says when it does not name the
same field, or `# server: accepted: <why>` for the one documented difference.
tests/unit/test_validate_corpus.py runs them through `llmtrain validate`;
tests/cluster/test_validation_parity.py through a server-side dry run on the real apiserver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"


@dataclass(frozen=True)
class Case:
    path: Path
    expect: str  # a substring of `llmtrain validate`'s error: the field path
    why: str
    server: str  # a substring of the apiserver's (or kubectl's) refusal

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def server_accepts(self) -> bool:
        return self.server.startswith("accepted:")


def bad_cases() -> list[Case]:
    out = []
    for path in sorted((HERE / "bad").glob("*.yaml")):
        first, second, third = path.read_text().splitlines()[:3]
        assert first.startswith("# path: "), f"{path}: first line must be '# path: ...'"
        expect = first.removeprefix("# path: ")
        # By default the server names the same field: its last part, without an index.
        server = (
            third.removeprefix("# server: ")
            if third.startswith("# server: ")
            else (expect.split(".")[-1].split("[")[0])
        )
        out.append(Case(path, expect, second.removeprefix("# "), server))
    return out


def good_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))
