"""The chart's alert rules, through promtool: they load, and each alert fires when it should.

    pytest tests/monitoring/test_rules.py

The rules are the ones the chart renders (default values), not a copy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.chart.chart import render, rules_file

HERE = Path(__file__).resolve().parent


def _rendered_rules(tmp_path: Path) -> Path:
    return rules_file(render(), tmp_path / "rules.yaml")


def test_promtool_check_rules(promtool: Path, tmp_path: Path) -> None:
    rules = _rendered_rules(tmp_path)
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests_cover_every_alert(promtool: Path, tmp_path: Path) -> None:
    rules = _rendered_rules(tmp_path)
    shutil.copy(HERE / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    proc = subprocess.run(
        [str(promtool), "test", "rules", "alerts.test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    alerts = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load((HERE / "alerts.test.yaml").read_text())["tests"]
    fired = {t["alertname"] for c in cases for t in c["alert_rule_test"] if t["exp_alerts"]}
    quiet = {t["alertname"] for c in cases for t in c["alert_rule_test"] if not t["exp_alerts"]}
    assert fired == alerts, "every alert needs a case where it fires"
    assert quiet == alerts, "every alert needs a case where it stays quiet"
