"""The Grafana dashboard (charts/llmtrain/files/dashboard.json), parsed panel by panel.

    pytest tests/chart/test_dashboard.py

Grafana's dashboard-linter is not on the Go module proxy (403), so this plays its part:
every panel has the templated datasource, targets with expressions and unique refIds, a
unique id, a gridPos on the 24-column grid without overlaps; every variable an expression
uses is defined; every metric is one the contracts define. tests/monitoring/ runs every
expression through a real Prometheus.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import dashboard

REPO = Path(__file__).resolve().parents[2]
GRAFANA_BUILTINS = {
    "__rate_interval",
    "__interval",
    "__range",
    "__range_s",
    "__interval_ms",
    "__all",
}
REQUIRED_PANELS = {
    "Jobs by phase",
    "Stage timeline",
    "Train and eval loss",
    "Learning rate",
    "Tokens per second",
    "Tokens processed",
    "Step",
    "ETA and elapsed",
    "Reward",
    "KL to the reference policy",
    "Restarts by reason",
    "GPU utilisation",
    "GPU memory",
    "Operator reconciles and errors",
    "Operator CPU and memory",
}
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}
_METRIC = re.compile(r"\b(llmtrain_[a-z0-9_]+|DCGM_FI_[A-Z0-9_]+)\b")
_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels", [])  # collapsed rows nest theirs
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]


def contract_metrics(section: str = "4.") -> set[str]:
    """llmtrain_* names in the tables of docs/contracts.md from §`section` on (default: §4,
    the driver, and §5, the operator)."""
    text = (REPO / "docs" / "contracts.md").read_text()
    sections = text.split(f"## {section}")[1]
    return {
        m
        for line in sections.splitlines()
        if line.startswith("|")
        for m in re.findall(r"`(llmtrain_[a-z0-9_]+)`", line)
    }


def test_operator_metrics_have_the_operator_prefix() -> None:
    """CONVENTIONS §4: `llmtrain_` for training metrics, `llmtrain_operator_` for the
    operator's own; the operator's code exports exactly the §5 names (and process_*)."""
    from llmtrain.operator.metrics import OperatorMetrics

    operator, everything = contract_metrics("5."), contract_metrics()
    # The one exception: gate results describe the model (from the jobs' status), as issue
    # #17 names it; docs/contracts.md §5 says so.
    own = operator - {"llmtrain_gate_passed"}
    assert own and all(m.startswith("llmtrain_operator_") for m in own)
    assert not any(m.startswith("llmtrain_operator_") for m in everything - operator)
    m = OperatorMetrics()
    m.job_phase("ns", "j", "Running")
    m.stage_restarts.labels(namespace="ns", job="j", reason="PodFailed").inc()
    m.reconciles.labels(result="ok").inc()
    m.stage_duration.labels(type="sft").observe(1)
    m.queued_seconds.labels(namespace="ns", job="j").inc(3)
    m.gates("ns", "j", [("sft", "evalLoss", True)])
    samples = {
        s.name for f in m.registry.collect() for s in f.samples if not s.name.endswith("_created")
    }
    assert {base_name(n) for n in samples if n.startswith("llmtrain_")} == operator
    assert "process_cpu_seconds_total" in samples


def base_name(metric: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", metric)


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return dashboard()


def test_top_level(dash: dict[str, Any]) -> None:
    assert dash["uid"] == "llmtrain-jobs" and dash["title"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert "id" not in dash or dash["id"] is None  # provisioned dashboards carry no db id


def test_variables(dash: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "stage"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert v["query"]["query"].startswith("label_values(")
    # job depends on namespace, stage on both
    assert "$namespace" in variables["job"]["query"]["query"]
    assert {"$namespace", "$job"} <= set(re.findall(r"\$\w+", variables["stage"]["query"]["query"]))


def test_every_panel_is_well_formed(dash: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        targets = p["targets"]
        assert targets, p["title"]
        assert len({t["refId"] for t in targets}) == len(targets), p["title"]
        for t in targets:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]
            assert t.get("legendFormat"), p["title"]


def test_panels_do_not_overlap(dash: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dash):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_variables_used_are_defined(dash: dict[str, Any]) -> None:
    defined = {v["name"] for v in dash["templating"]["list"]} | GRAFANA_BUILTINS
    exprs = [e for _, e in queries(dash)] + [
        v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"
    ]
    for expr in exprs:
        for braced, plain in _VAR.findall(expr):
            assert (braced or plain) in defined, f"undefined variable in {expr}"
    # Training panels filter by all three variables; pods by namespace/job/stage too.
    for title, expr in queries(dash):
        if (
            "llmtrain_" in expr
            and "DCGM" not in expr
            and "operator" not in title.lower()
            and title
            not in (
                "Jobs by phase",
                "Restarts by reason",
                "Stage duration and time to running",
                "Time queued",  # per job: a job queues before any stage runs
            )
        ):
            assert all(f"${v}" in expr for v in ("namespace", "job", "stage")), (title, expr)


def test_required_panels(dash: dict[str, Any]) -> None:
    titles = {p["title"] for p in panels(dash)}
    assert REQUIRED_PANELS <= titles, REQUIRED_PANELS - titles
    by_title = {p["title"]: p for p in panels(dash)}
    assert by_title["Stage timeline"]["type"] == "state-timeline"
    assert "DCGM_FI_DEV_GPU_UTIL" in by_title["GPU utilisation"]["targets"][0]["expr"]
    assert "DCGM_FI_DEV_FB_USED" in by_title["GPU memory"]["targets"][0]["expr"]
    reconciles = by_title["Operator reconciles and errors"]["targets"][0]["expr"]
    assert "llmtrain_operator_reconciles_total" in reconciles and "result" in reconciles
    restarts = by_title["Restarts by reason"]["targets"][0]["expr"]
    assert "reason" in restarts and all(f"${v}" in restarts for v in ("namespace", "job"))
    assert "process_resident_memory_bytes" in str(by_title["Operator CPU and memory"])


def test_metrics_are_the_contract_metrics(dash: dict[str, Any]) -> None:
    """Every llmtrain_* name in the dashboard and alerts is in docs/contracts.md §4/§5, and
    every contract metric is shown or alerted on."""
    from tests.chart.chart import find, render

    contract = contract_metrics()
    assert len(contract) >= 25 and "llmtrain_train_loss" in contract
    rule = find(render(), "PrometheusRule")
    alert_exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = {base_name(m) for _, e in queries(dash) for m in _METRIC.findall(e)}
    used |= {m for e in alert_exprs for m in _METRIC.findall(e)}
    variable_metrics = {
        m
        for v in dash["templating"]["list"]
        if v["type"] == "query"
        for m in _METRIC.findall(v["query"]["query"])
    }
    assert (used | variable_metrics) - contract - DCGM == set(), "metric not in the contracts"
    assert contract - used == set(), "contract metrics missing from the dashboard and alerts"
    assert DCGM <= used


def test_readme_monitoring_section_names_every_metric_panel_and_alert(
    dash: dict[str, Any],
) -> None:
    from tests.chart.chart import find, render

    readme = (REPO / "README.md").read_text()
    assert "## Monitoring" in readme
    section = readme.split("## Monitoring", 1)[1]
    missing = [m for m in sorted(contract_metrics() | DCGM) if f"`{m}`" not in section]
    missing += [
        p["title"]
        for p in panels(dash)
        if p["type"] != "row" and f"| {p['title']} |" not in section
    ]
    rule = find(render(), "PrometheusRule")
    missing += [
        r["alert"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if f"`{r['alert']}`" not in section
    ]
    assert missing == [], "add these to README.md's Monitoring section"
