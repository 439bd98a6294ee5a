"""Generate the CRD and the API reference from the pydantic models in `api.py`.

    llmtrain crd                 # rewrite crds/ and docs/api.md
    llmtrain crd --check         # non-zero exit when the committed files drifted

Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema, so refs are
inlined, `X | None` unions collapse to `X` (optional means "not in required"), and JSON
Schema's numeric `exclusiveMinimum` becomes OpenAPI's boolean form.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from llmtrain.operator import api
from llmtrain.trainer.config import Model

JSON = dict[str, Any]

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "format",
    "nullable",
}


def _resolve(node: JSON, defs: JSON) -> JSON:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _convert(node: JSON, defs: JSON) -> JSON:
    node = _resolve(node, defs)
    if node.get("x-kubernetes-int-or-string"):
        out: JSON = {"x-kubernetes-int-or-string": True}
        for k in ("description", "pattern", "default"):
            if k in node:
                out[k] = node[k]
        return out
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node}")
        inner = _convert(branches[0], defs)
        for k in (
            "description",
            "x-kubernetes-validations",
            "x-kubernetes-preserve-unknown-fields",
        ):
            if k in node:
                inner[k] = node[k]
        if node.get("default") is not None:
            inner["default"] = node["default"]
        return inner
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = _convert(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default" and value is None:
            continue
        elif key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out = {
            k: v
            for k, v in out.items()
            if k in ("description", "x-kubernetes-preserve-unknown-fields")
        }
        out["type"] = "object"
    elif "enum" in node and "type" not in out:
        out["type"] = "string"
    elif "type" not in out and ("properties" in out or "additionalProperties" in out):
        out["type"] = "object"
    # type and description first: easier to read in the committed YAML.
    head: JSON = {k: out[k] for k in ("type", "description") if k in out}
    return {**head, **{k: v for k, v in out.items() if k not in head}}


def openapi_schema(model: type[Model]) -> JSON:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}))


def crd() -> JSON:
    spec = openapi_schema(api.LLMTrainingJobSpec)
    status = openapi_schema(api.LLMTrainingJobStatus)
    # The status is written by the operator only; defaults there would fight its patches.
    status = _strip_defaults(status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all", "llmtrain"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _col("Phase", "string", ".status.phase"),
                        _col("Stage", "string", ".status.stageSummary"),
                        _col("Progress", "string", ".status.progress"),
                        _col("Loss", "number", ".status.loss"),
                        _col("Restarts", "integer", ".status.restarts"),
                        _col("Gate", "string", ".status.failedGate"),
                        _col("Age", "date", ".metadata.creationTimestamp"),
                        _col("Reason", "string", ".status.reason", priority=1),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "LLMTrainingJob runs ordered LLM training stages "
                            "(pretrain, sft, reward, dpo, ppo, grpo) on gangs of GPU pods.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                # The only metadata a CRD may restrict: the name.
                                "metadata": {
                                    "type": "object",
                                    "properties": {
                                        "name": {
                                            "type": "string",
                                            "description": "Job name: part of every pod "
                                            "name, so a short DNS label.",
                                            "maxLength": api.NAME_MAX,
                                            "pattern": api.DNS_LABEL,
                                        }
                                    },
                                },
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def _col(name: str, type_: str, path: str, priority: int = 0) -> JSON:
    col: JSON = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        col["priority"] = priority  # 1: only in `kubectl get -o wide`
    return col


def _strip_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # shared sub-schemas are written out in full, not as &anchors


def crd_yaml() -> str:
    header = "# Generated by `llmtrain crd` from llmtrain/operator/api.py. Do not edit.\n"
    return header + yaml.dump(crd(), Dumper=_NoAliases, sort_keys=False, width=100)


def api_markdown() -> str:
    """docs/api.md: one table per object, fields with type, default and description."""
    root = openapi_schema(api.LLMTrainingJobSpec)
    lines = [
        "# LLMTrainingJob API reference",
        "",
        f"`apiVersion: {api.API_VERSION}`, `kind: {api.KIND}` (short name `llmtj`).",
        "Generated by `llmtrain crd` from the pydantic models; do not edit by hand.",
        "",
    ]
    _md(lines, "spec", root)
    lines += ["", "## status", ""]
    _md(lines, "status", openapi_schema(api.LLMTrainingJobStatus), heading=False)
    return "\n".join(lines) + "\n"


def _md(lines: list[str], path: str, node: JSON, heading: bool = True) -> None:
    props = node.get("properties") or node.get("items", {}).get("properties")
    if not props:
        return
    if heading:
        lines += [f"## {path}", ""]
    for rule in node.get("x-kubernetes-validations", []):
        lines.append(f"- Rule: {rule['message']} (`{rule['rule']}`)")
    required = set(node.get("required", []) or node.get("items", {}).get("required", []))
    lines += ["", "| field | type | default | description |", "| --- | --- | --- | --- |"]
    children = []
    for name, sub in props.items():
        kind = _type_name(sub)
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        req = " **(required)**" if name in required else ""
        desc = sub.get("description", "").replace("|", "\\|")
        if "enum" in sub:
            desc += " One of: " + ", ".join(f"`{v}`" for v in sub["enum"]) + "."
        lines.append(f"| `{name}` | {kind} | {default} | {desc}{req} |")
        if sub.get("properties") or sub.get("items", {}).get("properties"):
            children.append((f"{path}.{name}" + ("[]" if sub.get("type") == "array" else ""), sub))
    lines.append("")
    for child_path, sub in children:
        _md(lines, child_path, sub)


def _type_name(node: JSON) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    t = node.get("type", "object")
    if t == "array":
        return f"[]{_type_name(node.get('items', {}))}"
    if t == "object" and "additionalProperties" in node:
        return f"map[string]{_type_name(node['additionalProperties'])}"
    return str(t)
