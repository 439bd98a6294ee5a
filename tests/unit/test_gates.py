"""Quality gates and probes in the API and the state machine (pure; no cluster, no torch).

A stage's driver reports its result metrics in its termination message; the operator
decides the stage's gates with config.check_gates and fails the job (GateFailed) before the
next stage, or moves on. The local runner decides with the same function.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmtrain.operator import api, status
from llmtrain.operator.api import Phase
from llmtrain.operator.metrics import OperatorMetrics
from llmtrain.operator.progress import PodView, result_metrics
from llmtrain.trainer.config import Gate, check_gates

from .test_state import DOC, World, running

GATES = [{"metric": "evalLoss", "max": 1.2}, {"metric": "probes.passRate", "min": 0.8}]


def gated() -> World:
    w = World()
    w.spec = {"stages": [{**DOC["spec"]["stages"][0], "gates": GATES}, DOC["spec"]["stages"][1]]}
    return running(w)


def message(**metrics: float) -> str:
    return json.dumps({"metrics": metrics})


def test_a_failed_gate_fails_the_job_and_starts_no_later_stage() -> None:
    w = gated()
    w.set(0, "Succeeded", exit_code=0, message=message(evalLoss=1.73, **{"probes.passRate": 1}))
    d = w.step()
    st = w.status
    assert st is not None and st.phase == Phase.Failed and st.reason == status.REASON_GATE_FAILED
    assert d.ensure is None and st.current_stage == "sft"
    assert st.stages[1].attempt == 0  # dpo never started
    failed = w.cond(status.COND_FAILED)
    assert failed is not None and failed.reason == "GateFailed"
    assert failed.message == "stage sft: gate failed: evalLoss = 1.73, outside gate max 1.2"
    assert st.failed_gate == "sft: evalLoss = 1.73, outside gate max 1.2"
    sft = st.stages[0]
    assert [(g.metric, g.value, g.passed) for g in sft.gates] == [
        ("evalLoss", 1.73, False),
        ("probes.passRate", 1.0, True),
    ]
    assert [e.reason for e in d.events] == [status.REASON_GATE_FAILED]
    assert w.step().status == st  # terminal: later passes change nothing


def test_passing_gates_start_the_next_stage() -> None:
    w = gated()
    w.set(0, "Succeeded", exit_code=0, message=message(evalLoss=0.9, **{"probes.passRate": 0.8}))
    d = w.step()
    st = w.status
    assert st is not None and st.current_stage == "dpo" and d.ensure == ("dpo", 1)
    assert all(g.passed for g in st.stages[0].gates) and st.failed_gate is None


def test_a_metric_the_stage_did_not_report_fails_its_gate() -> None:
    w = gated()
    w.set(0, "Succeeded", exit_code=0)  # no termination message at all
    w.step()
    assert w.status is not None and w.status.phase == Phase.Failed
    assert "evalLoss was not reported (gate max 1.2)" in (w.status.failed_gate or "")


def test_result_metrics_from_a_termination_message() -> None:
    assert result_metrics(message(loss=1.5, evalLoss=2.0)) == {"loss": 1.5, "evalLoss": 2.0}
    for bad in (None, "", "not json", "[1]", '{"metrics": {"x": "a", "y": true}}'):
        assert result_metrics(bad) == {}
    pod = {
        "metadata": {"name": "j-sft-a1-0", "labels": {"llmtrain.io/stage": "sft",
                     "llmtrain.io/attempt": "1", "llmtrain.io/rank": "0"}},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer",
                   "state": {"terminated": {"exitCode": 0, "message": message(loss=1.0)}}}]},
    }  # fmt: skip
    view = PodView.from_pod(pod)
    assert view is not None and result_metrics(view.message) == {"loss": 1.0}


def test_check_gates_bounds_are_inclusive() -> None:
    gates = [Gate(metric="exactMatch", min=0.5, max=0.9)]
    assert [g["passed"] for g in check_gates(gates, {"exactMatch": 0.5})] == [True]
    assert [g["passed"] for g in check_gates(gates, {"exactMatch": 0.91})] == [False]
    out = check_gates(gates, {"exactMatch": 0.2})[0]
    assert out["message"] == "exactMatch = 0.2, outside gate min 0.5 and max 0.9"


def _doc(stage: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(DOC))
    doc["spec"]["stages"] = [doc["spec"]["stages"][0], stage]
    doc["spec"].update(spec)
    return doc


@pytest.mark.parametrize(
    "stage, spec, path, words",
    [
        ({"name": "e", "type": "eval", "dataset": {"source": "q", "format": "messages"}}, {},
         "spec.stages[1].dataset.format", "eval stages need text or prompt-completion"),
        ({"name": "e", "type": "sft", "dataset": {"source": "q", "format": "messages"},
          "eval": {}}, {}, "spec.stages[1].eval", "only allowed when type is eval"),
        ({"name": "e", "type": "eval", "dataset": {"source": "q", "format": "text"},
          "gates": [{"metric": "evalLoss"}]}, {}, "spec.stages[1].gates[0]", "min or max"),
        ({"name": "e", "type": "eval", "dataset": {"source": "q", "format": "text"},
          "gates": [{"metric": "accuracy", "min": 1}]}, {}, "spec.stages[1].gates[0].metric",
         "must match pattern"),
        ({"name": "e", "type": "eval", "dataset": {"source": "q", "format": "text"}},
         {"probes": {"prompts": [{"prompt": "hi"}]}}, "spec.probes.prompts[0]",
         "one of contains or regex"),
    ],
)  # fmt: skip
def test_validate_names_the_field(
    stage: dict[str, Any], spec: dict[str, Any], path: str, words: str
) -> None:
    problems = [str(p) for p in api.validate_job(_doc(stage, **spec))]
    assert any(p.startswith(path) and words in p for p in problems), problems


def test_gate_metric_is_exported_per_stage_and_forgotten_with_the_job() -> None:
    m = OperatorMetrics()
    m.gates("ns", "j", [("sft", "evalLoss", False), ("sft", "probes.passRate", True)])
    text = {s.labels["metric"]: s.value for f in m.registry.collect() for s in f.samples
            if s.name == "llmtrain_gate_passed"}  # fmt: skip
    assert text == {"evalLoss": 0.0, "probes.passRate": 1.0}
    m.job_phase("ns", "j", None)
    assert not [s for f in m.registry.collect() for s in f.samples if "gate" in s.name]
