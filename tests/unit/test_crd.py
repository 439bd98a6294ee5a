"""The generated CRD: committed copies match the generator, and the schema is structural."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmtrain.cli import main as cli
from llmtrain.operator import crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_files_match_the_generator() -> None:
    files = cli.generated_files(ROOT)
    assert ROOT / "crds" / "llmtrainingjobs.yaml" in files
    drifted = [str(p) for p, text in files.items() if not p.exists() or p.read_text() != text]
    assert drifted == [], "run `llmtrain crd`"


def _walk(node, path="openAPIV3Schema"):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def schema() -> dict:
    doc = yaml.safe_load((ROOT / "crds" / "llmtrainingjobs.yaml").read_text())
    assert doc["spec"]["names"]["shortNames"] == ["llmtj"]
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural_and_documented() -> None:
    for path, node in _walk(schema()):
        assert "anyOf" not in node and "$ref" not in node and "title" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        if path.count(".") >= 2 and not path.endswith("[]") and "{}" not in path:
            assert node.get("description"), f"{path} has no description"


def test_preserve_unknown_fields_only_where_free_form() -> None:
    free = sorted(p for p, n in _walk(schema()) if n.get("x-kubernetes-preserve-unknown-fields"))
    # podTemplate itself is an allow-list; only the inside of allowed volume sources and
    # spread constraints is free-form (the apiserver checks those when the pod is created).
    volumes = "openAPIV3Schema.spec.resources.podTemplate.spec.volumes[]"
    assert free == [
        "openAPIV3Schema.spec.model.architecture",
        "openAPIV3Schema.spec.resources.affinity",
        "openAPIV3Schema.spec.resources.podTemplate.spec.topologySpreadConstraints[]",
        *(
            f"{volumes}.{s}"
            for s in (
                "configMap",
                "csi",
                "downwardAPI",
                "emptyDir",
                "ephemeral",
                "persistentVolumeClaim",
            )
        ),
        *(
            f"{volumes}.projected.sources[].{s}"
            for s in ("clusterTrustBundle", "configMap", "downwardAPI", "secret")
        ),
        f"{volumes}.secret",
    ]


def test_enums_bounds_defaults_and_cel_rules_are_in_the_schema() -> None:
    spec = schema()["properties"]["spec"]
    stage = spec["properties"]["stages"]["items"]
    assert stage["properties"]["type"]["enum"] == [
        "pretrain",
        "sft",
        "reward",
        "dpo",
        "ppo",
        "grpo",
        "eval",
    ]
    gate = stage["properties"]["gates"]["items"]
    assert gate["x-kubernetes-validations"][0]["rule"] == "has(self.min) || has(self.max)"
    peft = stage["properties"]["peft"]["properties"]
    assert peft["method"]["enum"] == ["none", "lora", "qlora", "dora"]
    assert peft["r"]["minimum"] == 0 and peft["r"]["exclusiveMinimum"] is True
    assert stage["properties"]["hyperparameters"]["properties"]["seed"]["default"] == 42
    assert spec["properties"]["stages"]["maxItems"] == 16
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    stages = spec["properties"]["stages"]
    assert stages["x-kubernetes-list-type"] == "map", "unique stage names, refused by index"
    assert stages["x-kubernetes-list-map-keys"] == ["name"]
    assert any("oldSelf" in r for r in rules), "immutability while running"
    immutable = {r["fieldPath"] for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]}
    assert ".monitoring" in immutable and ".resources" in immutable


def test_printer_columns() -> None:
    doc = yaml.safe_load(crd.crd_yaml())
    cols = [c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Phase", "Stage", "Progress", "Loss", "Restarts", "Gate", "Age", "Reason"]
    wide = [
        c["name"]
        for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]
        if c.get("priority") == 1
    ]
    assert wide == ["Reason"]
    assert doc["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_api_reference_lists_nested_fields() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    for heading in ("## spec.stages[]", "## spec.stages[].peft", "## spec.runPolicy", "## status"):
        assert heading in text
    assert "| `learningRate` | number | `2e-05` | Peak learning rate. |" in text
