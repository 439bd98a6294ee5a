"""The README's `helm install`, exactly as written, on a bare cluster and on one with the
prometheus-operator CRDs: it succeeds on both, and only the second gets the monitors.

    pytest -m cluster tests/cluster/test_chart_first_install.py

CRDs are cluster-scoped and the control plane is shared by the session, so the bare case
first removes the monitoring CRDs if an earlier test applied them (tests that need them
apply them again: tests/chart/chart.py apply_monitoring_crds), then installs, checks and
uninstalls; only then does the second case apply them and install again. The release name
and namespace are the README's, so the two installs run one after the other.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import CHART, MONITORING_CRDS, REPO, apply_monitoring_crds, manifest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def readme_install(readme: Path) -> list[str]:
    """The `helm install` of the README's first code block that has one (the repository
    README: in "On Kubernetes"), as argv; continuation lines joined, comments dropped."""
    text = readme.read_text()
    if readme == REPO / "README.md":
        text = text.split("## On Kubernetes", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines = [ln.split("#", 1)[0].strip() for ln in joined.splitlines()]
        found = [ln for ln in lines if ln.startswith("helm install ")]
        if found:
            return shlex.split(found[0])
    raise AssertionError(f"{readme}: no helm install")


def _normalized(argv: list[str]) -> list[str]:
    flags = {"-n": "--namespace"}
    return [flags.get(a, a) for a in argv]


def _run_readme_install(cluster: Any) -> tuple[str, str, str]:
    """Run the README's command; the chart path is relative to the repository root."""
    argv = readme_install(REPO / "README.md")
    assert argv[:2] == ["helm", "install"]
    release, chart = argv[2], argv[3]
    assert (REPO / chart).resolve() == CHART
    args = ["install", release, str(REPO / chart), *argv[4:]]
    notes: str = cluster.helm(*args, timeout=180)
    ns = _normalized(argv)[_normalized(argv).index("--namespace") + 1]
    return release, ns, notes


def _serves_monitoring(cluster: Any) -> bool:
    return "monitoring.coreos.com/v1" in cluster.kubectl("api-versions").split()


def _remove_monitoring_crds(cluster: Any) -> None:
    cluster.kubectl(
        "delete", "-f", str(MONITORING_CRDS), "--ignore-not-found", "--wait=true", timeout=120
    )
    cluster.wait_for(
        "monitoring.coreos.com/v1 gone from discovery",
        lambda: not _serves_monitoring(cluster),
        timeout=60,
    )


def _exists(cluster: Any, obj: dict[str, Any], ns: str) -> bool:
    api = obj["apiVersion"]
    group = api.split("/")[0] if "/" in api else ""
    resource = f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()
    where = ["-n", obj["metadata"].get("namespace", ns)]
    out = cluster.kubectl(
        "get",
        resource,
        obj["metadata"]["name"],
        *where,
        "-o",
        "name",
        "--ignore-not-found",
        check=False,
    )
    if not out:  # cluster-scoped
        out = cluster.kubectl(
            "get",
            resource,
            obj["metadata"]["name"],
            "-o",
            "name",
            "--ignore-not-found",
            check=False,
        )
    return bool(out.strip())


def _uninstall(cluster: Any, release: str, ns: str) -> None:
    cluster.helm("uninstall", release, "--namespace", ns, "--wait", timeout=180)
    # The post-delete hook ran (kwok completes Job pods) and left nothing behind.
    left = cluster.kubectl(
        "get",
        "jobs,serviceaccounts",
        "-n",
        ns,
        "-o",
        "name",
        "-l",
        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=cleanup",
    )
    assert left.strip() == ""
    assert not cluster.kubectl(
        "get", "clusterrole", f"{release}-cleanup", "--ignore-not-found", "-o", "name"
    )
    assert not cluster.kubectl(
        "get",
        "validatingadmissionpolicy",
        f"{release}-operator-pods",
        "--ignore-not-found",
        "-o",
        "name",
    )


def test_both_readmes_give_the_same_command() -> None:
    root, chart = readme_install(REPO / "README.md"), readme_install(CHART / "README.md")
    assert _normalized(root) == _normalized(chart)


def test_readme_install_on_a_bare_cluster_then_with_monitoring_crds(
    cluster: Any, llmtj_crd: dict[str, Any]
) -> None:
    # ---- a bare cluster: no monitoring.coreos.com/v1 --------------------------------------
    if _serves_monitoring(cluster):
        _remove_monitoring_crds(cluster)
    release, ns, notes = _run_readme_install(cluster)
    objects = manifest(cluster, release, ns)
    kinds = {o["kind"] for o in objects}
    assert not MONITORING_KINDS & kinds
    assert {
        "Deployment",
        "ClusterRole",
        "ValidatingAdmissionPolicy",
        "NetworkPolicy",
        "ConfigMap",
    } <= kinds  # the dashboard ConfigMap needs no CRD
    assert [o["metadata"]["name"] for o in objects if not _exists(cluster, o, ns)] == []
    assert re.search(r"does not serve monitoring\.coreos\.com/v1", notes), notes
    # kwok runs the operator's pods: nothing refused them.
    cluster.wait_for(
        "operator pods",
        lambda: (
            len(
                json.loads(
                    cluster.kubectl(
                        "get",
                        "pods",
                        "-n",
                        ns,
                        "-o",
                        "json",
                        "-l",
                        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator",
                    )
                )["items"]
            )
            == 2
        ),
        timeout=60,
    )
    _uninstall(cluster, release, ns)

    # ---- the same command where the prometheus-operator CRDs are installed ---------------
    apply_monitoring_crds(cluster)
    cluster.wait_for(
        "monitoring.coreos.com/v1 in discovery", lambda: _serves_monitoring(cluster), timeout=60
    )
    release, ns, notes = _run_readme_install(cluster)
    objects = manifest(cluster, release, ns)
    monitors = [o for o in objects if o["kind"] in MONITORING_KINDS]
    assert {o["kind"] for o in monitors} == MONITORING_KINDS
    assert [o["metadata"]["name"] for o in objects if not _exists(cluster, o, ns)] == []
    assert "ServiceMonitor" in notes and "does not serve" not in notes
    _uninstall(cluster, release, ns)
