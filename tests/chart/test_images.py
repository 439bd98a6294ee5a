"""The Dockerfiles, checked without Docker: sources exist, entrypoints name real commands,
the chart's default images are the ones these files build, and both run as non-root.
tests/images/build.sh builds these same files with buildah (on a local Debian base), and
tests/e2e/test_real_node.py runs what it built; here, what that build relies on.

    pytest tests/chart/test_images.py
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

from llmtrain.cli.main import app

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmtrain"
OPERATOR, TRAINER = REPO / "Dockerfile.operator", REPO / "Dockerfile.trainer"
BUILD_SCRIPT = REPO / "tests" / "images" / "build.sh"


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
            if src == ".":
                continue  # the whole context: test_the_build_context_holds_the_whole_package
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such path"
            assert dockerignore_allows(src.rstrip("/")), f".dockerignore excludes {src}"


def test_the_build_context_holds_the_whole_package() -> None:
    """`COPY . ./` brings what .dockerignore lets through: every package directory the wheel
    is built from (a new one, say cli/, must be let through too) and the readme."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = set(project["tool"]["setuptools"]["package-dir"].values())
    wanted = {d.split("/")[0] for d in dirs} | {
        project["project"]["readme"],
        "pyproject.toml",
        "constraints.txt",
    }
    for path in sorted(wanted):
        assert dockerignore_allows(path), f".dockerignore leaves {path} out of the image"
    for path in ("tests", ".venv", ".git", "runs", "operator/__pycache__"):
        assert not dockerignore_allows(path), f".dockerignore lets {path} into the image"


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_entrypoint_names_a_real_cli_command(dockerfile: Path) -> None:
    argv = exec_form(dockerfile, "ENTRYPOINT") + exec_form(dockerfile, "CMD")
    assert argv[0] == "llmtrain"
    command = next(a for a in argv[1:] if not a.startswith("-"))
    assert command in cli_commands(), (
        f"{dockerfile.name} runs `llmtrain {command}`, but the CLI has only "
        f"{sorted(cli_commands())}"
    )


def test_operator_image_runs_llmtrain_operator_without_torch() -> None:
    assert exec_form(OPERATOR, "ENTRYPOINT") == ["llmtrain", "operator"]
    runs = " ".join(args for word, args in instructions(OPERATOR) if word == "RUN")
    assert re.search(r"pip install -c constraints.txt \.( |$)", runs), runs
    assert "[train]" not in runs and "torch" not in runs
    # The chart's Deployment passes flags only: they must be what the image's command takes.
    assert "operator" in cli_commands()


def arg_default(path: Path, name: str) -> str:
    found = [
        a.split("=", 1)[1] for w, a in instructions(path) if w == "ARG" and a.startswith(f"{name}=")
    ]
    assert found, f"{path.name}: no ARG {name}=..."
    return found[0]


def test_trainer_image_is_cuda_with_the_train_extra_and_non_root() -> None:
    assert arg_default(TRAINER, "BASE").startswith("nvidia/cuda:")
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
    for dockerfile, repo in [
        (OPERATOR, values["image"]["repository"]),
        (TRAINER, values["jobDefaults"]["image"]["repository"]),
    ]:
        assert f"| `{repo}` | `{dockerfile.name}` |" in readme
        assert f"-t {repo}:" in dockerfile.read_text()  # the documented build command


def test_trainer_uid_is_the_one_the_operator_runs_pods_as() -> None:
    from llmtrain.operator import layout

    users = [a for w, a in instructions(TRAINER) if w == "USER"]
    assert users[-1].split(":")[0] == str(layout.RUN_AS_USER)


def test_operator_image_defaults_to_python_slim() -> None:
    assert arg_default(OPERATOR, "BASE").startswith("python:3.11-slim")


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_base_and_uv_are_build_args_the_test_build_sets(dockerfile: Path) -> None:
    """tests/images/build.sh swaps in a local Debian base and a local uv image; an ARG the
    Dockerfile does not declare (or a FROM that ignores it) would be silently ignored."""
    froms = [a.split()[0] for w, a in instructions(dockerfile) if w == "FROM"]
    assert froms[0] == "${UV_IMAGE}" and set(froms[1:]) == {"${BASE}"}, froms
    script = BUILD_SCRIPT.read_text()
    for arg in ("BASE", "UV_IMAGE", "UV_CACHE_DIR"):
        arg_default(dockerfile, arg)
        assert f'--build-arg "{arg}=' in script or f"--build-arg {arg}=" in script, arg
    assert '-f "Dockerfile.$name"' in script and "for name in operator trainer" in script


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=lambda p: p.name)
def test_dependencies_are_a_layer_before_the_sources(dockerfile: Path) -> None:
    """The dependency layer (GBs for the trainer) is built from the pins alone, so a source
    change rebuilds only the project's layer; then the project is a wheel installed against
    the same pins, not an editable install or a copy of the tree."""
    steps = [(w, a) for w, a in instructions(dockerfile) if w in ("COPY", "RUN")]
    first_source = next(
        i
        for i, (w, a) in enumerate(steps)
        if w == "COPY" and a.split()[0] in (".", "operator/", "README.md")
    )
    deps = [a for w, a in steps[:first_source] if w == "RUN" and "-r pyproject.toml" in a]
    assert deps and "-c constraints.txt" in deps[0], steps
    copied = [
        a.split()[:-1]
        for w, a in steps[:first_source]
        if w == "COPY" and not a.startswith("--from")
    ]
    assert copied == [["pyproject.toml", "constraints.txt"]], copied
    project = [a for w, a in steps[first_source:] if w == "RUN" and "uv pip install" in a]
    assert project and "-c constraints.txt" in project[0] and " -e " not in project[0]
