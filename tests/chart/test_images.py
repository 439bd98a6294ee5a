"""The Dockerfiles, checked without Docker: sources exist, entrypoints name real commands,
the chart's default images are the ones these files build, and both run as non-root.

    pytest tests/chart/test_images.py
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from llmtrain.operator.cli import app

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmtrain"
OPERATOR, TRAINER = REPO / "Dockerfile.operator", REPO / "Dockerfile.trainer"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(path: Path, instruction: str) -> list[str]:
    found = [args for word, args in instructions(path) if word == instruction]
    assert found, f"{path.name}: no {instruction}"
    value = json.loads(found[-1])  # exec form: a JSON array, so no shell wraps the process
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def labels(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for word, args in instructions(path):
        if word == "LABEL":
            for token in shlex.split(args):
                k, _, v = token.partition("=")
                out[k] = v
    return out


def cli_commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def dockerignore_allows(path: str) -> bool:
    allowed = False
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    copies = [args for word, args in instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = shlex.split(args)
        if any(p.startswith("--from=") for p in parts):
            continue  # from another stage or image
        sources = [p for p in parts if not p.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
            assert dockerignore_allows(src.rstrip("/")), f".dockerignore excludes {src}"


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_entrypoint_names_a_real_cli_command(dockerfile: Path) -> None:
    argv = exec_form(dockerfile, "ENTRYPOINT") + exec_form(dockerfile, "CMD")
    assert argv[0] == "llmtrain"
    command = next(a for a in argv[1:] if not a.startswith("-"))
    assert command in cli_commands(), (
        f"{dockerfile.name} runs `llmtrain {command}`, but the CLI has only "
        f"{sorted(cli_commands())}")


def test_operator_image_runs_llmtrain_operator_without_torch() -> None:
    assert exec_form(OPERATOR, "ENTRYPOINT") == ["llmtrain", "operator"]
    runs = " ".join(args for word, args in instructions(OPERATOR) if word == "RUN")
    assert re.search(r"pip install -c constraints.txt \.( |$)", runs), runs
    assert "[train]" not in runs and "torch" not in runs
    # The chart's Deployment passes flags only: they must be what the image's command takes.
    assert "operator" in cli_commands()


def test_trainer_image_is_cuda_with_the_train_extra_and_non_root() -> None:
    args = [a for w, a in instructions(TRAINER) if w == "ARG" and a.startswith("CUDA_IMAGE=")]
    assert args and args[0].split("=", 1)[1].startswith("nvidia/cuda:")
    runs = " ".join(a for w, a in instructions(TRAINER) if w == "RUN")
    assert '".[train]"' in runs
    assert exec_form(TRAINER, "ENTRYPOINT") == ["llmtrain"]
    assert exec_form(TRAINER, "CMD")[0] == "worker"


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [a for w, a in instructions(dockerfile) if w == "USER"]
    assert users, f"{dockerfile.name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it


def test_chart_default_images_are_the_ones_the_dockerfiles_build() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert labels(OPERATOR)["io.llmtrain.image"] == values["image"]["repository"]
    assert labels(TRAINER)["io.llmtrain.image"] == values["jobDefaults"]["image"]["repository"]
    readme = (CHART / "README.md").read_text()
    for dockerfile, repo in [(OPERATOR, values["image"]["repository"]),
                             (TRAINER, values["jobDefaults"]["image"]["repository"])]:
        assert f"| `{repo}` | `{dockerfile.name}` |" in readme
        assert f"-t {repo}:" in dockerfile.read_text()  # the documented build command


def test_trainer_uid_is_the_one_the_operator_runs_pods_as() -> None:
    from llmtrain.operator import resources

    users = [a for w, a in instructions(TRAINER) if w == "USER"]
    assert users[-1].split(":")[0] == str(resources.RUN_AS_USER)
