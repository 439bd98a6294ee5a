"""Every examples/*.yaml applies unchanged with `kubectl apply -n <namespace>`, given only the
prerequisites its header lists, and the header lists exactly what its pods need.

    pytest -m cluster tests/cluster/test_chart_examples.py

The header names each prerequisite on a line of its own, `#   - <Kind> <name>` (a Secret
also `with key <key>`), or says `Prerequisites: none`. What the pods need is read from the
pods the operator would build for each stage (manifests.build_stage_objects): claims,
Secrets (volumes, env, envFrom, image pull), the PriorityClass, a ServiceAccount other than
`default`. The apply is a real create on the test control plane with the CRD installed; the
pods are then created as a server-side dry run, which fails if, say, the PriorityClass the
job names is missing.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
_PREREQ = re.compile(
    r"^#\s+- (Secret|PersistentVolumeClaim|PriorityClass) (\S+?)(?::)?"
    r"(?: with key (\S+?))?(?::| |$)"
)
Ref = tuple[str, str, str]  # kind, name, key ("" but for Secret keys)


def header(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def prerequisites(path: Path) -> set[Ref]:
    text = header(path)
    assert any("Prerequisites" in ln for ln in text), f"{path.name}: no Prerequisites in header"
    found = set()
    for line in text:
        m = _PREREQ.match(line)
        if m:
            found.add((m.group(1), m.group(2), m.group(3) or ""))
    if any("Prerequisites: none" in ln for ln in text):
        assert not found, f"{path.name}: says none, lists {found}"
    return found


def build_pods(path: Path, namespace: str) -> list[dict[str, Any]]:
    """The pods of every stage's first attempt, as the operator builds them."""
    from llmtrain.operator import api, layout, manifests

    doc = yaml.safe_load(path.read_text())
    assert "namespace" not in doc["metadata"], f"{path.name} must not name a namespace"
    doc["metadata"]["namespace"] = namespace
    job = api.parse_job(doc)
    pods = []
    for stage in job.spec.stages:
        objs = manifests.build_stage_objects(job, stage.name, 1, layout.JobDefaults())
        pods += [o for o in objs if o["kind"] == "Pod"]
    return pods


def references(pods: list[dict[str, Any]]) -> set[Ref]:
    out: set[Ref] = set()
    for pod in pods:
        spec = pod["spec"]
        own = {
            v["configMap"]["name"]
            for v in spec.get("volumes", [])
            if "configMap" in v and v["name"] == "config"
        }  # the operator's stage config
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                out.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], ""))
            if "secret" in v:
                out.add(("Secret", v["secret"]["secretName"], ""))
            if "configMap" in v and v["configMap"]["name"] not in own:
                out.add(("ConfigMap", v["configMap"]["name"], ""))
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    out.add(("Secret", ref["name"], ref["key"]))
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    out.add(("Secret", e["secretRef"]["name"], ""))
        for s in spec.get("imagePullSecrets", []):
            out.add(("Secret", s["name"], ""))
        if spec.get("priorityClassName"):
            out.add(("PriorityClass", spec["priorityClassName"], ""))
        if spec.get("serviceAccountName", "default") != "default":
            out.add(("ServiceAccount", spec["serviceAccountName"], ""))
    return out


def create_prerequisite(cluster: Any, ns: str, kind: str, name: str, key: str) -> None:
    if kind == "Secret":
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            f"--from-literal={key or 'value'}=not-a-real-secret",
        )
    elif kind == "PersistentVolumeClaim":
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        cluster.kubectl("create", "-f", "-", input=json.dumps(claim))
    elif kind == "PriorityClass":  # cluster-wide: shared by the session, so idempotent
        pc = {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": 1000,
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pc))
    else:
        raise AssertionError(f"no recipe for a {kind}")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_header_lists_exactly_what_the_pods_need(example: Path) -> None:
    need = references(build_pods(example, "ns"))
    listed = prerequisites(example)
    # A Secret listed with a key covers the pods' reference to that key.
    assert listed == need, f"{example.name}: header lists {listed}, pods need {need}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_applies_unchanged_into_a_fresh_namespace(
    cluster: Any, llmtj_crd: dict[str, Any], example: Path
) -> None:
    ns = f"lt-ex-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(ns)
    try:
        for kind, name, key in sorted(prerequisites(example)):
            create_prerequisite(cluster, ns, kind, name, key)
        out = cluster.kubectl("apply", "-n", ns, "-f", str(example), "-o", "json")
        applied = json.loads(out)
        assert applied["kind"] == "LLMTrainingJob"
        assert applied["metadata"]["namespace"] == ns
        name = applied["metadata"]["name"]
        assert cluster.get("llmtj", name, ns)["metadata"]["uid"]
        # The pods the operator would create there are admitted (PriorityClass, claims...).
        for pod in build_pods(example, ns):
            cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
    finally:
        cluster.kubectl("delete", "llmtj", "--all", "-n", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
