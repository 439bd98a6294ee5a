"""The Helm chart, rendered by a real helm: lint, every ci/ scenario, RBAC, the Deployment.

    pytest tests/chart

Cluster-side checks (install, the apiserver accepting every object, the operator running
under the chart's RBAC) are in tests/cluster/test_chart_install.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import (
    CHART,
    MONITORING_API,
    NAMESPACE,
    REPO,
    SCENARIOS,
    find,
    find_all,
    helm,
    kube_version,
    readme_with_table,
    render,
)

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs}, one entry per group/resource pair."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# What the operator needs (docs in the chart README, "RBAC"), and nothing else: kopf and the
# operator write with PATCH, never PUT, and never change a pod once created.
NAMESPACED = {
    ("llmtrain.io", "llmtrainingjobs"): {"get", "list", "watch", "patch", "delete"},
    ("llmtrain.io", "llmtrainingjobs/status"): {"patch"},
    ("llmtrain.io", "llmtrainingjobs/finalizers"): {"update"},  # blockOwnerDeletion
    ("", "pods"): {"get", "list", "watch", "create", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("scheduling.x-k8s.io", "podgroups"): {"get", "create", "delete"},  # scheduling.gang
}
# The operator's per-attempt NetworkPolicies (networkPolicy.enabled, the default).
NETWORK_POLICIES = {("networking.k8s.io", "networkpolicies"): {"get", "create", "delete"}}
# Kueue admission (kueue.enabled, the default): Workloads per stage, and the cluster-scoped
# reads that fill them and the admitted pods (the flavor's scheduling, the priority value).
KUEUE = {("kueue.x-k8s.io", "workloads"): {"get", "list", "watch", "create", "delete"}}
KUEUE_CLUSTER = {
    ("kueue.x-k8s.io", "resourceflavors"): {"get"},
    ("scheduling.k8s.io", "priorityclasses"): {"get"},
}
# Cluster-scoped reads kopf makes in both modes (the namespaced one too: tests/cluster).
CLUSTER_READS = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint(scenario: str) -> None:
    proc = helm(
        "lint",
        str(CHART),
        "--strict",
        "--kube-version",
        kube_version(),
        "--namespace",
        NAMESPACE,
        "--values",
        str(CHART / "ci" / scenario),
    )
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_renders_well_formed_objects(scenario: str) -> None:
    docs = render(scenario)
    assert docs
    seen = set()
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), d
        meta = d["metadata"]
        key = (d["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"rendered twice: {key}"
        seen.add(key)
        assert len(meta["name"]) <= 63
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "llmtrain", key
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
    assert find(docs, "Deployment")


def test_scenarios_cover_defaults_namespaced_monitoring_off_and_minimal() -> None:
    assert {
        "defaults-values.yaml",
        "namespaced-values.yaml",
        "monitoring-off-values.yaml",
        "minimal-values.yaml",
    } <= set(SCENARIOS)


def test_chart_crds_are_the_generated_ones() -> None:
    top = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert "llmtrainingjobs.yaml" in top and "kopf-peering.yaml" in top
    assert chart == top, "charts/llmtrain/crds/ must equal crds/ (run `llmtrain crd`, copy)"
    names = {d["metadata"]["name"] for t in chart.values() for d in yaml.safe_load_all(t) if d}
    assert names == {
        "llmtrainingjobs.llmtrain.io",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }


def test_defaults_watch_all_namespaces_with_one_clusterrole() -> None:
    docs = render()
    role = find(docs, "ClusterRole", "llmtrain-operator")
    expected = {
        **NAMESPACED,
        **NETWORK_POLICIES,
        **KUEUE,
        **CLUSTER_READS,
        **KUEUE_CLUSTER,
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    }
    assert rules_of(role) == expected
    binding = find(docs, "ClusterRoleBinding", "llmtrain-operator")
    assert binding["roleRef"]["name"] == "llmtrain-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmtrain-operator", "namespace": NAMESPACE}
    ]
    assert find_all(docs, "Role") == []
    assert find(docs, "ClusterKopfPeering", "llmtrain")
    # Without NetworkPolicies the operator does not get to create them either.
    off = find(render(None, "networkPolicy.enabled=false"), "ClusterRole", "llmtrain-operator")
    assert rules_of(off) == {k: v for k, v in expected.items() if k not in NETWORK_POLICIES}
    # Nor Workloads, flavors and priority classes without Kueue.
    off = find(render(None, "kueue.enabled=false"), "ClusterRole", "llmtrain-operator")
    assert rules_of(off) == {
        k: v for k, v in expected.items() if k not in KUEUE and k not in KUEUE_CLUSTER
    }
    args = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and "--peering=llmtrain" in args
    assert not any(a.startswith("--namespace") for a in args)


def test_namespaced_mode_uses_a_role_per_namespace() -> None:
    docs = render("namespaced-values.yaml")
    roles = find_all(docs, "Role", "llmtrain-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == {
            **NAMESPACED,
            **NETWORK_POLICIES,
            **KUEUE,
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        }
    bindings = find_all(docs, "RoleBinding", "llmtrain-operator")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == NAMESPACE
    # Only the cluster-scoped reads kopf needs; no jobs, pods or peering cluster-wide.
    cluster_roles = [
        r for r in find_all(docs, "ClusterRole") if "operator" in r["metadata"]["name"]
    ]
    assert [rules_of(r) for r in cluster_roles] == [{**CLUSTER_READS, **KUEUE_CLUSTER}]
    peerings = find_all(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert find_all(docs, "ClusterKopfPeering") == []
    args = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args and "--debug" in args


def test_no_rule_grants_wildcards_or_secrets() -> None:
    for scenario in SCENARIOS:
        for role in find_all(render(scenario), "ClusterRole") + find_all(render(scenario), "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role
                assert "secrets" not in rule["resources"], role


def _env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _policy_service_account(docs: list[dict[str, Any]]) -> str:
    """The ServiceAccount the admission policy holds the operator's pods to."""
    policy = find(docs, "ValidatingAdmissionPolicy")
    (rule,) = [
        v["expression"]
        for v in policy["spec"]["validations"]
        if "serviceAccountName" in v["expression"]
    ]
    (name,) = set(re.findall(r"== '([^']*)'", rule))
    return name


def test_worker_serviceaccount_defaults_to_each_namespaces_default() -> None:
    """Job pods need no API access: by default they run as `default`, and a new namespace
    needs nothing from the chart (no ServiceAccount, no helm upgrade)."""
    docs = render()
    assert [
        sa["metadata"]["name"]
        for sa in find_all(docs, "ServiceAccount")
        if sa["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ] == []
    assert _env(docs)["LLMTRAIN_WORKER_SERVICE_ACCOUNT"] == ""  # the operator: unset
    assert _policy_service_account(docs) == "default"  # what admission sees then


def test_worker_serviceaccount_named_or_created() -> None:
    # Named, made by the user: passed on, not created.
    docs = render("minimal-values.yaml", "admissionPolicy.enabled=true")
    assert find_all(docs, "ServiceAccount", "trainer") == []
    assert _env(docs)["LLMTRAIN_WORKER_SERVICE_ACCOUNT"] == "trainer"
    assert _policy_service_account(docs) == "trainer"
    # Created by the chart where the operator watches: bound to nothing, no token.
    for scenario, sets, namespaces in [
        ("namespaced-values.yaml", (), ["team-a", "team-b"]),
        (None, ("serviceAccount.worker.create=true",), [NAMESPACE]),
    ]:
        docs = render(scenario, *sets)
        workers = find_all(docs, "ServiceAccount", "llmtrain-worker")
        assert sorted(w["metadata"]["namespace"] for w in workers) == namespaces
        assert all(w["automountServiceAccountToken"] is False for w in workers)
        for b in find_all(docs, "RoleBinding") + find_all(docs, "ClusterRoleBinding"):
            assert all(s["name"] != "llmtrain-worker" for s in b["subjects"]), b
        assert _env(docs)["LLMTRAIN_WORKER_SERVICE_ACCOUNT"] == "llmtrain-worker"
        assert _policy_service_account(docs) == "llmtrain-worker"


def test_editor_and_viewer_roles_aggregate_into_the_builtin_roles() -> None:
    docs = render()
    editor = find(docs, "ClusterRole", "llmtrain-editor")
    viewer = find(docs, "ClusterRole", "llmtrain-viewer")
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert rules_of(editor)[("llmtrain.io", "llmtrainingjobs")] >= {"create", "delete", "patch"}
    assert all(v <= {"get", "list", "watch"} for v in rules_of(viewer).values())


def test_deployment_defaults() -> None:
    docs = render()
    dep = find(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llmtrain-operator"
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/llmtrain/operator:0.1.0"
    assert c["args"] == [
        "--all-namespaces",
        "--peering=llmtrain",
        "--peering-lifetime=15",
        "--health-bind=0.0.0.0:8080",
        "--metrics-bind=0.0.0.0:8000",
    ]
    env = _env(docs)
    assert env["LLMTRAIN_TRAINER_IMAGE"] == "ghcr.io/llmtrain/trainer:0.1.0"
    assert env["LLMTRAIN_METRICS_PORT"] == "9400"
    assert env["LLMTRAIN_DEFAULT_PVC"] == ""
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf peering id
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 8000}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The `restricted` Pod Security Standard (the cluster test enforces it for real).
    sc, psc = c["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_namespaced_scenario_passes_scheduling_and_job_defaults() -> None:
    docs = render("namespaced-values.yaml")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert pod["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LLMTRAIN_DEFAULT_PVC"] == "llm-checkpoints"
    assert env["LLMTRAIN_METRICS_PORT"] == "9500"
    assert find(docs, "Deployment")["spec"]["replicas"] == 3


def test_custom_images_tags_and_affinity() -> None:
    docs = render(
        None,
        "image.repository=reg.example/op",
        "image.tag=v9",
        "jobDefaults.image.repository=reg.example/tr",
        "jobDefaults.image.tag=t1",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    )
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "reg.example/op:v9"
    assert {"name": "LLMTRAIN_TRAINER_IMAGE", "value": "reg.example/tr:t1"} in c["env"]
    assert list(pod["affinity"]) == ["nodeAffinity"]


def test_single_replica_without_peering() -> None:
    docs = render("monitoring-off-values.yaml")
    args = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--peering") for a in args) and "--standalone" in args
    assert find_all(docs, "ClusterKopfPeering") == find_all(docs, "PodDisruptionBudget") == []


def test_peering_lifetime_is_a_value() -> None:
    args = find(render(None, "operator.peering.lifetime=40"), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]["args"]
    assert "--peering-lifetime=40" in args
    values = (CHART / "values.yaml").read_text()
    assert "within seconds" not in values and "within about `peering.lifetime` seconds" in values


def test_monitoring_objects_only_where_the_cluster_serves_their_api() -> None:
    """A bare cluster (no monitoring.coreos.com/v1) gets no monitors, so `helm install` works
    there; one with the prometheus-operator CRDs gets them; a value forces them."""
    bare = render(api_versions=())
    assert not MONITORING_KINDS & {d["kind"] for d in bare}
    assert find(bare, "ConfigMap", "llmtrain-dashboard")  # a plain ConfigMap needs nothing
    assert {d["kind"] for d in render()} >= MONITORING_KINDS
    forced = render(None, "metrics.assumeMonitoringCrds=true", api_versions=())
    assert {d["kind"] for d in forced} >= MONITORING_KINDS
    # ... and each toggle still turns its object off.
    off = render("monitoring-off-values.yaml", "metrics.assumeMonitoringCrds=true")
    assert not MONITORING_KINDS & {d["kind"] for d in off}


def test_monitoring_objects_and_toggles() -> None:
    docs = render()
    assert {d["kind"] for d in docs} >= MONITORING_KINDS
    svc = find(docs, "Service", "llmtrain-operator-metrics")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]
    sm = find(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    pm = find(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"llmtrain.io/role": "head"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # Keep the drivers' `job`/`namespace` labels (the LLMTrainingJob), not the target's.
    assert pm["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert find(render("namespaced-values.yaml"), "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }
    cm = find(docs, "ConfigMap", "llmtrain-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["llmtrain-jobs.json"] == (CHART / "files/dashboard.json").read_text().strip()

    off = render("monitoring-off-values.yaml")
    assert not MONITORING_KINDS & {d["kind"] for d in off}
    assert find_all(off, "ConfigMap") == []
    assert find(off, "Service", "llmtrain-operator-metrics")  # still scrapeable by hand
    for toggle, kind in [
        ("serviceMonitor", "ServiceMonitor"),
        ("podMonitor", "PodMonitor"),
        ("prometheusRule", "PrometheusRule"),
    ]:
        kinds = {d["kind"] for d in render(None, f"metrics.{toggle}.enabled=false")}
        assert kind not in kinds and (MONITORING_KINDS - {kind}) <= kinds


def test_alert_rules_are_the_five_plus_reconcile_errors() -> None:
    rule = find(render(), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "LLMTrainJobFailed",
        "LLMTrainGateFailed",
        "LLMTrainStageStalled",
        "LLMTrainNoProgress",
        "LLMTrainRestartsClimbing",
        "LLMTrainOperatorDown",
        "LLMTrainReconcileErrors",
    }
    assert (
        'up{job="llmtrain-operator-metrics", namespace="llmtrain-system"}'
        in (alerts["LLMTrainOperatorDown"]["expr"])
    )
    for a in alerts.values():
        assert a["labels"]["severity"] in ("warning", "critical")
        assert a["annotations"]["summary"] and a["annotations"]["description"]
    custom = find(
        render(
            None,
            "metrics.prometheusRule.stallWindow=10m",
            "metrics.prometheusRule.additionalAlertLabels.team=ml",
        ),
        "PrometheusRule",
    )
    rules = [r for g in custom["spec"]["groups"] for r in g["rules"]]
    assert all(r["labels"]["team"] == "ml" for r in rules)
    assert "[10m]" in next(r["expr"] for r in rules if r["alert"] == "LLMTrainStageStalled")


def test_network_policies() -> None:
    """Jobs' NetworkPolicies come from the operator (one per stage attempt, naming the job);
    the chart turns that on, tells it who may scrape drivers, and polices only its own pods."""
    docs = render("namespaced-values.yaml")
    (op,) = find_all(docs, "NetworkPolicy")
    assert op["metadata"]["name"] == "llmtrain-operator"
    assert op["metadata"]["namespace"] == NAMESPACE
    assert [r["ports"][0]["port"] for r in op["spec"]["ingress"]] == [8000, 8080]
    env = _env(docs)
    assert env["LLMTRAIN_NETWORK_POLICY"] == "true"
    operator, prometheus, extra = json.loads(env["LLMTRAIN_METRICS_FROM"])
    assert operator == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "podSelector": {"matchLabels": find(docs, "Deployment")["spec"]["selector"]["matchLabels"]},
    }
    assert prometheus == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert extra["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "otel-collector"}}
    # On by default; off: no policies, no flag, no RBAC for them.
    assert _env(render())["LLMTRAIN_NETWORK_POLICY"] == "true"
    off = render(None, "networkPolicy.enabled=false")
    assert find_all(off, "NetworkPolicy") == []
    assert _env(off)["LLMTRAIN_NETWORK_POLICY"] == "false"
    assert "LLMTRAIN_METRICS_FROM" not in _env(off)


def test_admission_policy_holds_only_the_operator_to_safe_pods() -> None:
    docs = render("namespaced-values.yaml")
    policy = find(docs, "ValidatingAdmissionPolicy")
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["pods", "pods/ephemeralcontainers"]
    assert rule["apiVersions"] == ["v1"]  # a version, not "*": the apiserver type-checks then
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    (match,) = spec["matchConditions"]
    assert match["expression"] == (
        f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:llmtrain-operator"'
    )
    text = json.dumps(spec["validations"])
    for needle in (
        "llmtrain.io/job",
        "automountServiceAccountToken",
        "serviceAccountToken",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "privileged",
        "allowPrivilegeEscalation",
        "'ALL'",
        "runAsNonRoot",
        "runAsUser",
        "RuntimeDefault",
        "hostPath",
        "hostPort",
    ):
        assert needle in text, needle
    binding = find(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    # Off with the value; a cluster before 1.30 (no v1 API) must say so rather than fail late.
    kinds = {d["kind"] for d in render(None, "admissionPolicy.enabled=false")}
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & kinds
    proc = helm("template", "x", str(CHART), "--kube-version", "1.29.4", check=False)
    assert proc.returncode != 0 and "admissionPolicy.enabled" in proc.stderr, proc.stderr
    assert (
        helm(
            "template",
            "x",
            str(CHART),
            "--kube-version",
            "1.29.4",
            "--set",
            "admissionPolicy.enabled=false",
        ).returncode
        == 0
    )


def test_values_schema_rejects_mistakes() -> None:
    for bad, message in [
        ("operator.logLevel=warning", "logLevel"),
        ("watch.allNamespaces=maybe", "allNamespaces"),
        ("metrics.prometheusRule.stallWindow=soon", "stallWindow"),
        ("operater.replicas=2", "operater"),
        ("jobDefaults.metricsPort=80", "metricsPort"),
        # Gone: job pods run as `default` and the operator makes their NetworkPolicies.
        ("jobNamespaces={team-a}", "jobNamespaces"),
        ("networkPolicy.extraMetricsPorts={9401}", "extraMetricsPorts"),
    ]:
        proc = helm(
            "template", "x", str(CHART), "--kube-version", kube_version(), "--set", bad, check=False
        )
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr)


_KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):")


def test_every_value_is_documented_and_camel_case() -> None:
    """helm-docs style: a `# --` comment block right above every key (nested ones too)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    in_block_of: int | None = None  # indentation of a documented key whose value we skip
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        if in_block_of is not None and indent > in_block_of:
            continue  # inside a documented default (e.g. resources.requests.cpu)
        in_block_of = None
        j = i - 1
        comment = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        rest = line[m.end() :].strip()
        following = [ln for ln in lines[i + 1 :] if ln.strip()]
        is_parent = (
            rest == ""
            and bool(following)
            and (len(following[0]) - len(following[0].lstrip()) > indent)
        )
        if comment and comment[0].startswith("# --"):
            if is_parent:
                in_block_of = indent  # a documented map default: children are its value
        elif not is_parent:
            undocumented.append(f"line {i + 1}: {m.group(2)}")
        assert "_" not in m.group(2) or m.group(2) == "grafana_dashboard", m.group(2)
    assert undocumented == []


def test_values_schema_is_valid_json_schema_and_matches_values() -> None:
    import json

    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)


def test_chart_readme_values_table_is_current() -> None:
    readme = (CHART / "README.md").read_text()
    assert readme == readme_with_table(readme), "run `python -m tests.chart.chart`"
    for key in (
        "image.repository",
        "watch.allNamespaces",
        "operator.replicas",
        "jobDefaults.pvc",
        "metrics.podMonitor.enabled",
        "networkPolicy.enabled",
        "admissionPolicy.enabled",
        "uninstall.removeFinalizers",
        "operator.peering.lifetime",
        "metrics.assumeMonitoringCrds",
    ):
        assert f"| `{key}` |" in readme


def test_notes_are_numbered() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    steps = [int(n) for n in re.findall(r"^(\d+)\. ", notes, re.M)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "llmtrain"
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["appVersion"] == project["version"]


def test_template_files_exist_for_every_kind(tmp_path: Path) -> None:
    """`helm template --output-dir` writes one file per template: no template is empty in all
    scenarios (a dead template is a bug)."""
    produced: set[str] = set()
    for scenario in SCENARIOS + ["namespaced-values.yaml"]:
        out = tmp_path / scenario
        helm(
            "template",
            "llmtrain",
            str(CHART),
            "--kube-version",
            kube_version(),
            "--api-versions",
            MONITORING_API,
            "--values",
            str(CHART / "ci" / scenario),
            "--output-dir",
            str(out),
        )
        produced |= {p.name for p in out.rglob("*.yaml")}
    templates = {p.name for p in (CHART / "templates").glob("*.yaml")}
    assert templates - produced == set()
