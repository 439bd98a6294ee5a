"""`spec.scheduling.gang: podgroup`: a coscheduling PodGroup per attempt, by rendering.

pytest tests/unit/test_gang.py
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmtrain.operator import api, gang, manifests
from tests.unit.test_state import DOC

LLMTRAIN = Path(sys.executable).parent / "llmtrain"


def job(**scheduling: Any) -> api.LLMTrainingJob:
    doc = copy.deepcopy(DOC)
    doc["spec"]["scheduling"] = scheduling
    doc["spec"]["resources"]["workers"] = 3
    return api.parse_job(doc)


def test_podgroup_holds_the_whole_gang_and_every_pod_joins_it() -> None:
    objs = manifests.build_stage_objects(job(gang="podgroup"), "sft", 2)
    (group,) = [o for o in objs if o["kind"] == "PodGroup"]
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["metadata"]["name"] == "j-sft-a2" and group["spec"] == {"minMember": 3}
    assert group["metadata"]["ownerReferences"][0]["uid"] == "u1"
    kinds = [o["kind"] for o in objs]
    assert kinds.index("PodGroup") < kinds.index("Pod")  # the group exists before its pods
    pods = [o for o in objs if o["kind"] == "Pod"]
    assert len(pods) == 3
    for p in pods:
        assert p["metadata"]["labels"][gang.POD_GROUP_LABEL] == "j-sft-a2"
        assert p["spec"]["schedulerName"] == "scheduler-plugins-scheduler"


def test_the_jobs_own_scheduler_name_wins() -> None:
    doc = copy.deepcopy(DOC)
    doc["spec"]["scheduling"] = {"gang": "podgroup"}
    doc["spec"]["resources"]["schedulerName"] = "my-coscheduler"
    objs = manifests.build_stage_objects(api.parse_job(doc), "sft", 1)
    assert {o["spec"]["schedulerName"] for o in objs if o["kind"] == "Pod"} == {"my-coscheduler"}


def test_none_is_the_default_and_changes_nothing() -> None:
    objs = manifests.build_stage_objects(job(), "sft", 1)
    assert "PodGroup" not in {o["kind"] for o in objs}
    assert all("schedulerName" not in o["spec"] for o in objs if o["kind"] == "Pod")


def test_an_unknown_gang_mode_names_the_field() -> None:
    with pytest.raises(api.SpecError) as e:
        job(gang="volcano")
    assert "scheduling.gang" in str(e.value)


def test_llmtrain_render_prints_the_podgroup(tmp_path: Path) -> None:
    doc = copy.deepcopy(DOC)
    doc["metadata"] = {"name": "gangjob"}
    doc["spec"]["scheduling"] = {"gang": "podgroup"}
    doc["spec"]["storage"] = {"pvc": {"claimName": "shared"}}
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [str(LLMTRAIN), "render", str(f), "--image", "trainer:test"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    group = next(d for d in docs if d["kind"] == "PodGroup")
    assert group["spec"]["minMember"] == 2
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert {p["metadata"]["labels"][gang.POD_GROUP_LABEL] for p in pods} == {"gangjob-sft-a1"}
