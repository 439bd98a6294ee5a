"""The initializer in the state machine and its builder, as pure functions: no gang before the
preflight passed, a failed preflight fails the job with its problems, other failures retry.

    pytest tests/unit/test_initializer.py -q
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from llmtrain.operator import api, layout, manifests, state, status
from llmtrain.operator.api import Phase
from llmtrain.operator.progress import PodView
from llmtrain.operator.status import Decision, Policy
from llmtrain.trainer.contract import ExitCode
from llmtrain.trainer.inputs import InitConfig

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DOC: dict[str, Any] = {
    "apiVersion": "llmtrain.io/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {"name": "j", "namespace": "ns", "uid": "u1"},
    "spec": {
        "model": {"source": "org/base", "revision": "v2"},
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "dataset": {"source": "s3://b/chat.jsonl", "format": "messages"},
            },
            {
                "name": "dpo",
                "type": "dpo",
                "dataset": {"source": "/storage/p.jsonl", "format": "preference"},
            },
        ],  # fmt: skip
        "resources": {"workers": 2, "gpusPerWorker": 1},
        "storage": {"pvc": {"claimName": "c"}},
        "initializer": {"resources": {"cpu": "1"}, "gpuMemory": "80Gi"},
        "runPolicy": {"backoffLimit": 1},
    },
}
POLICY = Policy(retry_backoff=0, permanent_grace=0, initializer=True)


def _pass(status: api.LLMTrainingJobStatus | None, pods: list[PodView], dt: int = 0) -> Decision:
    job = api.parse_job(copy.deepcopy(DOC))
    job.status = status
    return state.decide(job, pods, T0 + timedelta(seconds=dt), policy=POLICY)


def _init_pod(attempt: int, phase: str, code: int | None = None, message: str = "") -> PodView:
    return PodView(
        name=layout.init_name("j", attempt),
        stage=layout.INIT_STAGE,
        attempt=attempt,
        rank=0,
        phase=phase,
        exit_code=code,
        owner_uid="u1",
        message=message or None,
    )


def test_the_first_pass_creates_the_initializer_and_no_gang() -> None:
    d = _pass(None, [])
    assert d.ensure_init == 1 and d.ensure is None
    assert d.status.phase == Phase.Initializing
    assert d.status.initializer and d.status.initializer.attempt == 1
    # Running, it still holds back the gang.
    d = _pass(d.status, [_init_pod(1, "Running")], 5)
    assert d.ensure is None and d.status.initializer.phase == Phase.Running
    assert d.delete_pods == []


def test_a_passed_preflight_starts_the_first_stage_with_its_figures() -> None:
    d = _pass(None, [])
    fig = {"stage": "sft", "kept": 90, "dropped": 10, "truncated": 3, "tokensP50": 40}
    figures = {"stages": [{**fig, "tokensMax": 64, "memoryBytes": 3 * 2**30}]}
    d = _pass(d.status, [_init_pod(1, "Succeeded", 0, json.dumps(figures))], 5)
    assert d.ensure == ("sft", 1)
    ini = d.status.initializer
    assert ini and ini.phase == Phase.Succeeded
    (fig,) = ini.preflight
    assert (fig.kept, fig.dropped, fig.tokens_p50, fig.memory_bytes) == (90, 10, 40, 3 * 2**30)
    assert [e.reason for e in d.events] == [status.REASON_PREFLIGHT_PASSED]
    # Later passes leave the finished initializer pod (its logs) and start no second one.
    d = _pass(d.status, [_init_pod(1, "Succeeded", 0)], 10)
    assert d.ensure_init is None and d.delete_pods == []


def test_a_failed_preflight_fails_the_job_with_the_paths_and_no_gang() -> None:
    d = _pass(None, [])
    problems = (
        "spec.stages[0].dataset: /storage/x.jsonl[train] row(s) 7: the assistant mask is empty"
    )
    pod = _init_pod(1, "Failed", ExitCode.PERMANENT, problems + "\n")
    d = _pass(d.status, [pod], 5)
    assert d.status.phase == Phase.Failed and d.status.reason == status.REASON_PREFLIGHT
    failed = status.condition(d.status, status.COND_FAILED)
    assert failed and failed.reason == "PreflightFailed" and problems in failed.message
    assert [e.reason for e in d.events] == ["PreflightFailed"]  # one event
    assert d.ensure is None and d.delete_pods == []  # the failed pod stays for its logs
    assert d.status.stages[0].attempt == 0  # no gang ever
    d = _pass(d.status, [pod], 10)
    assert d.events == [] and d.ensure is None


def test_other_initializer_failures_retry_within_the_backoff_limit() -> None:
    d = _pass(None, [])
    d = _pass(d.status, [_init_pod(1, "Failed", ExitCode.RETRYABLE, "s3: timeout")], 5)
    assert d.status.phase == Phase.Restarting and d.status.initializer.restarts == 1
    d = _pass(d.status, [_init_pod(1, "Failed", ExitCode.RETRYABLE)], 6)
    assert d.ensure_init == 2 and d.delete_pods == [layout.init_name("j", 1)]
    d = _pass(d.status, [_init_pod(2, "Failed", 137)], 7)
    assert d.status.phase == Phase.Failed and d.status.reason == status.REASON_BACKOFF


def test_the_initializer_pod_is_cpu_only_and_carries_its_config() -> None:
    job = api.parse_job(copy.deepcopy(DOC))
    defaults = layout.JobDefaults(initializer=True, initializer_memory="4Gi")
    cm, pod = manifests.build_initializer_objects(job, 1, defaults)
    assert cm["metadata"]["name"] == pod["metadata"]["name"] == "j-init-1"
    init = InitConfig.model_validate_json(cm["data"]["init.json"])
    assert init.gpu_memory == 80 * 2**30 and init.device == "cuda"
    assert [f.source for f in init.fetches] == ["org/base", "s3://b/chat.jsonl"]
    assert init.fetches[0].revision == "v2"
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}  # no nvidia.com/gpu
    assert c["command"][:4] == ["llmtrain", "initialize", "--job-config", "/etc/llmtrain/init.json"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["metadata"]["labels"][layout.LABEL_STAGE] == layout.INIT_STAGE
    assert PodView.from_pod(pod) is not None
    # The gang then reads the copies on storage, never the hub.
    sft = layout.stage_config(job, "sft", defaults)
    assert sft.input_model == sft.model.source == init.fetches[0].dest
    assert sft.model.revision is None
    assert sft.stage.dataset.source == init.fetches[1].dest
    assert layout.stage_config(job, "dpo", defaults).stage.dataset.source == "/storage/p.jsonl"
