"""Packaging promises: no stdlib shadowing, slim operator imports, wheel layout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

BLOCK_HEAVY = """
import sys
class Block:
    # Behaves as the operator image: no train extra, no kubernetes client (a test dependency).
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'ray', 'transformers', 'peft', 'trl', 'deepspeed',
                                  'datasets', 'bitsandbytes', 'accelerate', 'kubernetes'}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("how", ["-c", "-m"])
def test_stdlib_operator_still_works_from_repo_root(root, how) -> None:
    # -S: no site-packages, so nothing imports the stdlib `operator` before the repo root
    # (sys.path[0]) is searched; `-m` is how a fresh venv's `python -m pip` starts (runpy
    # pulls in collections, which needs operator.eq).
    code = (
        "import operator, functools\n"
        "assert functools.reduce(operator.add, [1, 2]) == 3\n"
        "print(operator.__file__)"
    )
    if how == "-c":
        cmd = [sys.executable, "-S", "-c", code]
    else:
        cmd = [sys.executable, "-S", "-m", "json.tool", "--compact"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, input='{"a": 1}')
    assert r.returncode == 0, r.stderr
    assert str(root / "operator") not in r.stdout


def test_operator_package_imports_with_core_dependencies_only(root) -> None:
    mods = sorted(p.stem for p in (root / "operator").glob("*.py") if p.stem != "__init__")
    code = (
        BLOCK_HEAVY
        + "".join(f"import llmtrain.operator.{m}\n" for m in mods)
        + (
            "heavy = ('torch', 'ray', 'kubernetes')\n"
            "assert not any(m.split('.')[0] in heavy for m in sys.modules)\n"
            "from llmtrain.cli.main import main\n"
            "main(['validate', 'examples/quickstart.yaml'])\n"
        )
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert "1 job(s) valid" in r.stdout, r.stderr
    assert "blocked" not in r.stderr


@pytest.mark.slow
def test_wheel_maps_folders_under_llmtrain(root, tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "uv", "build", "--wheel", "--out-dir", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:  # uv is a module in the test venv; fall back to pip
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(root)],
            capture_output=True,
            text=True,
        )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("llmtrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "llmtrain/operator/api.py" in names
    assert "llmtrain/trainer/config.py" in names
    assert not any(n.startswith(("operator/", "trainer/")) for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert (
        entry
        and "llmtrain = llmtrain.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
    )
