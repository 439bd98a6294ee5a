"""A real Prometheus on 127.0.0.1 for tests, and the chart's queries in a form it can run.

    with Prometheus(binary, tmp_path, scrape_configs, rule_files=[rules]) as prom:
        prom.wait_for_samples('llmtrain_train_step')
        prom.query_range('sum(rate(llmtrain_tokens_total[30s]))', start, end)

    scrape_config_for(servicemonitor, "127.0.0.1:8000", {"namespace": "llmtrain-system"})
    grafana_expr(expr, {"namespace": "team-a", "job": "qs", "stage": "sft"})

The scrape configs are derived from the chart's ServiceMonitor and PodMonitor (port, path,
honorLabels, and the `job` label prometheus-operator would give), with static loopback
targets instead of Kubernetes service discovery.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

SCRAPE_INTERVAL = "1s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape_config_for(
    monitor: dict[str, Any], target: str, labels: dict[str, str]
) -> dict[str, Any]:
    """What prometheus-operator generates for a ServiceMonitor/PodMonitor's first endpoint,
    minus Kubernetes discovery: same job label, path and honor_labels; a static target."""
    spec = monitor["spec"]
    if monitor["kind"] == "ServiceMonitor":
        endpoint = spec["endpoints"][0]
        # prometheus-operator's default `job` label for a ServiceMonitor target is the
        # Service's name; ours is the metrics Service (see the chart's _helpers.tpl).
        job = labels.pop("service")
        target_labels = {**labels, "service": job}
    else:
        endpoint = spec["podMetricsEndpoints"][0]
        ns, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
        job = f"podMonitor/{ns}/{name}/0"
        target_labels = dict(labels)
    return {
        "job_name": job,
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "static_configs": [{"targets": [target], "labels": target_labels}],
    }


_GRAFANA_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def grafana_expr(
    expr: str, variables: dict[str, str], rate_interval: str = "15s", range_: str = "10m"
) -> str:
    """Substitute dashboard variables as Grafana would for single values."""
    builtins = {"__rate_interval": rate_interval, "__interval": "2s", "__range": range_}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        # Names here are DNS labels: nothing to escape in a regex matcher.
        return variables[name]

    return _GRAFANA_VAR.sub(sub, expr)


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    def __init__(
        self,
        binary: Path,
        workdir: Path,
        scrape_configs: list[dict[str, Any]],
        rule_files: list[Path] | None = None,
    ):
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in rule_files or []],
                    "scrape_configs": scrape_configs,
                },
                sort_keys=False,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited:\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.3)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # 400/422: bad query; the body says why
            body = json.load(e)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self.api("query", **params)["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=start, end=end, step=step
        )["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def wait_for(self, what: str, check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        targets = [(t["labels"].get("job"), t["health"], t["lastError"]) for t in self.targets()]
        raise TimeoutError(f"{what} after {timeout}s; targets: {targets}\n{self.tail()}")

    def wait_for_samples(self, expr: str, timeout: float = 60) -> None:
        self.wait_for(f"no samples for {expr}", lambda: bool(self.query(expr)), timeout)


# Queries that need hardware this machine lacks: run for syntax only, never for data.
NEEDS_GPU = {
    "DCGM_FI_DEV_GPU_UTIL": "NVIDIA dcgm-exporter needs GPUs",
    "DCGM_FI_DEV_FB_USED": "NVIDIA dcgm-exporter needs GPUs",
    "llmtrain_gpu_memory_allocated_bytes": "the trainer exports it only when CUDA is present",
}


def dashboard_gaps(
    prom: Prometheus, dash: dict[str, Any], variables: dict[str, str], start: float, end: float
) -> tuple[list[str], set[str]]:
    """Run every panel query over [start, end] as Grafana would (a range query).

    Returns the queries without a finite value (GPU ones excepted) and the GPU metrics
    seen. A query Prometheus rejects raises PrometheusError.
    """
    import math

    gaps, gpu_seen = [], set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = grafana_expr(target["expr"], variables, range_=f"{int(end - start) + 5}s")
            result = prom.query_range(expr, start, end, step=1)
            gpu = {m for m in NEEDS_GPU if m in expr}
            gpu_seen |= gpu
            finite = any(math.isfinite(float(v)) for s in result for _, v in s["values"])
            if not gpu and not finite:
                gaps.append(f"{panel['title']}: {expr}")
    return gaps, gpu_seen


def check_variables(
    prom: Prometheus, dash: dict[str, Any], variables: dict[str, str], start: float, end: float
) -> None:
    """label_values(metric, label) is Grafana's; the series API answers it."""
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = grafana_expr(var["query"]["query"], variables)
        metric, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        series = prom.api("series", **{"match[]": metric, "start": start, "end": end})
        values = {s.get(label) for s in series}
        wanted = set(variables[var["name"]].split("|"))  # a multi-value selection
        assert wanted <= values, f"${var['name']}: {values}"


def check_rules(prom: Prometheus, rule: dict[str, Any]) -> None:
    """Every alert expression runs, and the loaded rule groups evaluate without errors."""
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            prom.query(r["expr"])
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    prom.wait_for(
        "every rule evaluated healthy",
        lambda: (
            {
                r["name"]
                for g in prom.api("rules")["groups"]
                for r in g["rules"]
                if r.get("health") == "ok" and r.get("lastEvaluation", "").startswith("20")
            }
            == names
        ),
        timeout=30,
    )
