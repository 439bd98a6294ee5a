"""Helpers shared by the chart tests: the helm binary, rendering, and the rendered objects.

    docs = render("ci/namespaced-values.yaml")          # helm template -> list of dicts
    find(docs, "Deployment")                             # the one Deployment

helm is the binary tests/controlplane/build.sh builds from the Go module proxy (cached).
Without Go the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmtrain"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "llmtrain"
NAMESPACE = "llmtrain-system"
# The prometheus-operator's API: with it (kube-prometheus) the chart renders its monitors.
MONITORING_API = "monitoring.coreos.com/v1"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def controlplane() -> Any:
    """tests/controlplane/cluster.py, loaded once under the name tests/cluster uses."""
    name = "llmtrain_tests_controlplane"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests/controlplane/cluster.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@functools.cache
def _bin_dir() -> Path | str:
    cp = controlplane()
    try:
        return Path(cp.build())
    except cp.GoMissing as e:
        return f"needs Go to build helm (tests/controlplane/build.sh): {e}"
    except subprocess.CalledProcessError as e:
        pytest.fail(f"tests/controlplane/build.sh failed:\n{(e.stderr or '')[-4000:]}")


def helm_bin() -> Path:
    found = _bin_dir()
    if isinstance(found, str):
        skip_or_fail(found)
    assert isinstance(found, Path)
    return found / "helm"


@functools.cache
def kube_version() -> str:
    """The Kubernetes version of the test control plane: helm template renders for it.

    (helm built from source without Helm's Makefile ldflags assumes Kubernetes v1.20.)
    """
    gomod = (REPO / "tests/controlplane/k8s/go.mod").read_text()
    m = re.search(r"k8s\.io/kubernetes v(\d+\.\d+\.\d+)", gomod)
    assert m, "k8s.io/kubernetes not in tests/controlplane/k8s/go.mod"
    return m.group(1)


def helm(
    *args: str, check: bool = True, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
    if home is not None:
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(home / kind.lower())
    proc = subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def render(
    values: str | None = None,
    *sets: str,
    namespace: str = NAMESPACE,
    api_versions: tuple[str, ...] = (MONITORING_API,),
    kube: str | None = None,
) -> list[dict[str, Any]]:
    """`helm template` the chart; values is a file name in ci/ or a path.

    By default for a cluster with the prometheus-operator CRDs (`api_versions`); pass
    `api_versions=()` for a bare one.
    """
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        kube or kube_version(),
    ]
    for api in api_versions:
        args += ["--api-versions", api]
    if values:
        path = Path(values) if "/" in values and Path(values).exists() else CHART / "ci" / values
        args += ["--values", str(path)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find_all(
    docs: list[dict[str, Any]], kind: str, name: str | None = None
) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find_all(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rules_file(docs: list[dict[str, Any]], path: Path) -> Path:
    """Write the rendered PrometheusRule's groups as a Prometheus rule file (for promtool)."""
    rule = find(docs, "PrometheusRule")
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def dashboard() -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    return data


# ---- the chart README's values table, generated from values.yaml's `# --` comments -------

_VALUE_KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):(.*)$")
TABLE_START, TABLE_END = "<!-- values:start -->", "<!-- values:end -->"


def values_table() -> str:
    """A helm-docs style Markdown table: one row per documented key (a `# --` comment)."""
    import json

    text = (CHART / "values.yaml").read_text()
    lines, values = text.splitlines(), yaml.safe_load(text)
    stack: list[tuple[int, str]] = []
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    skip_below: int | None = None
    for i, line in enumerate(lines):
        m = _VALUE_KEY.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        if skip_below is not None and indent > skip_below:
            continue  # inside a documented map default
        skip_below = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([s[1] for s in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        comment: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        if not (comment and comment[0].startswith("--")):
            continue
        value: Any = values
        for k in path.split("."):
            value = value[k]
        following = [ln for ln in lines[i + 1 :] if ln.strip()]
        if (
            m.group(3).strip() == ""
            and following
            and (len(following[0]) - len(following[0].lstrip()) > indent)
        ):
            skip_below = indent
        kind = {
            dict: "object",
            list: "list",
            bool: "bool",
            int: "int",
            float: "float",
            str: "string",
        }[type(value)]
        description = " ".join(comment)[2:].strip().replace("|", "\\|")
        rows.append(f"| `{path}` | {kind} | `{json.dumps(value)}` | {description} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    head, rest = readme.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{values_table()}\n{TABLE_END}{tail}"


if __name__ == "__main__":  # python -m tests.chart.chart: refresh the chart README's table
    readme = CHART / "README.md"
    readme.write_text(readme_with_table(readme.read_text()))
    print(f"wrote {readme}")


# ---- installing into the test control plane (tests/cluster) ----------------------------

MONITORING_CRDS = REPO / "tests" / "chart" / "fixtures" / "monitoring.coreos.com-crds.yaml"


def apply_monitoring_crds(cluster: Any) -> None:
    """The real prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(MONITORING_CRDS))
    for name in ("servicemonitors", "podmonitors", "prometheusrules"):
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{name}.monitoring.coreos.com",
            "--timeout=60s",
        )


def install(
    cluster: Any, release: str, namespace: str, values: str | None = None, *sets: str
) -> str:
    """`helm install` the chart into the test control plane; returns helm's output (NOTES).

    Release names must differ between installs in one session: the chart's cluster-scoped
    objects (ClusterRoles, the ClusterKopfPeering) are named after the release/peering.
    """
    args = ["install", release, str(CHART), "--namespace", namespace, "--wait=false"]
    if values:
        args += ["--values", str(CHART / "ci" / values)]
    for s in sets:
        args += ["--set", s]
    out: str = cluster.helm(*args, timeout=180)
    return out


def manifest(cluster: Any, release: str, namespace: str) -> list[dict[str, Any]]:
    """The objects helm installed for a release (`helm get manifest`)."""
    out = cluster.helm("get", "manifest", release, "--namespace", namespace)
    return [d for d in yaml.safe_load_all(out) if d]
