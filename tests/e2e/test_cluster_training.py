"""`kubectl apply` a job and watch it train: the operator (installed by the chart, from its
image) runs three stages as gangs of two real pods on a real kubelet, and survives what
clusters do to jobs.

    pytest -m e2e tests/e2e/test_cluster_training.py -s     # -s prints the scenario timings

One job, pretrain -> LoRA SFT -> DPO on the quickstart's data (on a PVC), two CPU pods per
stage (rank 0: Ray head + driver; rank 1: a Ray worker), and one disruption per stage:
  * pretrain: a worker pod is deleted mid-stage -> attempt 2 resumes from the checkpoint;
  * sft: the training process in a worker is SIGKILLed -> the driver exits 75 (retryable),
    attempt 2 resumes;
  * dpo: the job is suspended mid-stage -> the driver checkpoints before the gang goes, and
    the resumed attempt continues from that step.
Then a job with broken data fails in the initializer's preflight (PreflightFailed), before any gang.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmtrain"
QUICKSTART = REPO / "examples" / "quickstart"
SYSTEM = "llmtrain-system"
TIMINGS: dict[str, float] = {}


def wait(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - a read that races a deletion: try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Job:
    """One LLMTrainingJob on the real cluster, read through kubectl as a user would."""

    def __init__(self, cluster: Any, namespace: str, name: str) -> None:
        self.c, self.ns, self.name = cluster, namespace, name

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.c.get("llmtj", self.name, self.ns).get("status") or {}
        return st

    def stage(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status().get("stages", []) if s["name"] == name)

    def pods(self) -> dict[str, dict[str, Any]]:
        out = self.c.kubectl(
            "get", "pods", "-n", self.ns, "-l", f"llmtrain.io/job={self.name}", "-o", "json"
        )
        return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}

    def running(self, stage: str, attempt: int, timeout: float = 300) -> None:
        def ok() -> bool:
            st = self.status()
            cur = next((s for s in st.get("stages", []) if s["name"] == stage), {})
            failed = st.get("phase") == "Failed"
            assert not failed, json.dumps(st, indent=1)[-3000:]
            return bool(cur.get("attempt") == attempt and cur.get("phase") == "Running")

        wait(f"{stage} attempt {attempt} Running", ok, timeout)

    def step_at_least(self, stage: str, step: int, timeout: float = 300) -> int:
        return int(
            wait(
                f"{stage} at step {step}",
                lambda: (s := self.stage(stage)["progress"].get("step", 0)) >= step and s,
                timeout,
            )
        )

    def logs(self, pod: str) -> str:
        out: str = self.c.kubectl("logs", "-n", self.ns, pod, timeout=60)
        return out

    def table(self) -> dict[str, str]:
        """`kubectl get llmtj NAME -o wide` as {column: cell}, cut at the header's offsets."""
        header, row = self.c.kubectl(
            "get", "llmtj", self.name, "-n", self.ns, "-o", "wide"
        ).splitlines()
        starts = [
            i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")
        ]
        bounds = zip(starts, [*starts[1:], None], strict=True)
        return {header[a:b].strip(): row[a:b].strip() for a, b in bounds}


@pytest.fixture(scope="module")
def operator(real_cluster: Any) -> str:
    """`helm install` as the README says, pointed at the test images; faster resyncs."""
    t = time.monotonic()
    real_cluster.helm(
        "install",
        "llmtrain",
        str(CHART),
        "-n",
        SYSTEM,
        "--create-namespace",
        *(a for v in real_cluster.chart_image_values() for a in ("--set", v)),
        "--set",
        "operator.replicas=1",
        # The initializer (chart default 2 CPU) must fit beside the operator on the 2-CPU node.
        "--set",
        "initializer.resources.cpu=900m",
        "--set",
        "initializer.resources.memory=3Gi",
        "--set",
        "operator.extraArgs={--resync-seconds=2,--retry-backoff=2,--scrape-grace=120}",
        "--wait",
        "--timeout",
        "5m",
        timeout=400,
    )
    TIMINGS["helm install"] = time.monotonic() - t
    yield SYSTEM
    real_cluster.helm("uninstall", "llmtrain", "-n", SYSTEM, "--wait", check=False, timeout=200)


@pytest.fixture(scope="module")
def team(real_cluster: Any, operator: str) -> tuple[str, Path]:
    """A team namespace with the storage claim, holding the quickstart's data."""
    ns = "ml-e2e"
    real_cluster.create_namespace(ns)
    root = real_cluster.create_pvc(ns)
    data = root / "data"
    shutil.copytree(QUICKSTART, data, dirs_exist_ok=True)
    for p in [data, *data.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    return ns, root


def manifest(name: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    quickstart = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    model = quickstart["spec"]["model"]
    model["tokenizer"]["source"] = "/storage/data/tokenizer"
    return {
        "apiVersion": "llmtrain.io/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "stages": stages,
            "resources": {
                "workers": 2,
                "gpusPerWorker": 0,
                # 900m: two of them and the operator (100m) fit the node's 2 CPUs.
                "cpu": "900m",
                "memory": "3Gi",
                "shmSize": "1Gi",
            },
            "storage": {"pvc": {"claimName": "llm-storage"}},
            "checkpointing": {"everySteps": 20, "keep": 2},
            "runPolicy": {"backoffLimit": 3, "stallTimeoutSeconds": 900},
        },
    }


def quickstart_stages() -> list[dict[str, Any]]:
    stages = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())["spec"]["stages"]
    # Long enough (30-45 s each on 2 CPUs) that a disruption lands mid-training: the
    # quickstart's own step counts train for seconds, after a minute of start-up.
    steps = {"pretrain": 300, "sft": 250, "dpo": 150}
    for st in stages:
        st["dataset"]["source"] = "/storage/data/" + Path(st["dataset"]["source"]).name
        st["hyperparameters"].update(maxSteps=steps[st["name"]], loggingSteps=2)
    return stages


def test_three_stages_survive_a_lost_pod_a_killed_process_and_a_suspension(
    real_cluster: Any, team: tuple[str, Path]
) -> None:
    ns, root = team
    job = Job(real_cluster, ns, "e2e")
    real_cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps(manifest("e2e", quickstart_stages()))
    )
    t0 = time.monotonic()
    seen: list[dict[str, str]] = []  # what `kubectl get llmtj` showed while it ran

    # ---- pretrain: lose a worker pod after the first checkpoint ------------------------
    job.running("pretrain", 1, timeout=600)
    TIMINGS["apply -> first gang running"] = time.monotonic() - t0
    seen.append(job.table())
    wait("a checkpoint", lambda: job.stage("pretrain").get("lastCheckpoint"), 600)
    seen.append(job.table())
    # The gang spans both pods: a Ray Train worker runs in the worker pod too.
    real_cluster.kubectl(
        "exec", "-n", ns, "e2e-pretrain-a1-1", "--", "pgrep", "-f", "RayTrainWorker"
    )
    t = time.monotonic()
    real_cluster.kubectl("delete", "pod", "e2e-pretrain-a1-1", "-n", ns, "--wait=false")
    job.running("pretrain", 2, timeout=600)
    TIMINGS["pretrain: worker deleted -> attempt 2 running"] = time.monotonic() - t
    resumed = wait(
        "resume in the driver log",
        lambda: [ln for ln in job.logs("e2e-pretrain-a2-0").splitlines() if "resuming from" in ln],
        300,
    )
    step = int(resumed[0].rsplit("checkpoint-", 1)[1].split()[0])
    assert step > 0, resumed
    assert job.stage("pretrain")["restarts"] == 1

    # ---- sft: SIGKILL the training process in the worker pod -----------------------------
    job.running("sft", 1, timeout=900)
    # After a complete checkpoint, so that attempt 2 has one to resume from (killed at an
    # earlier step, it starts over: right, but not what this tests).
    wait("an sft checkpoint", lambda: job.stage("sft").get("lastCheckpoint"), 600)
    seen.append(job.table())
    t = time.monotonic()
    real_cluster.kubectl(
        "exec", "-n", ns, "e2e-sft-a1-1", "--", "pkill", "-9", "-f", "RayTrainWorker"
    )
    job.running("sft", 2, timeout=600)
    TIMINGS["sft: process killed -> attempt 2 running"] = time.monotonic() - t
    events = json.loads(
        real_cluster.kubectl(
            "get", "events", "-n", ns, "-o", "json", "--field-selector", "involvedObject.name=e2e"
        )
    )
    restarts = [
        e["message"]
        for e in events["items"]
        if e["reason"] == "PodFailed" and "stage sft" in e["message"]
    ]
    assert restarts and "exit code 75" in restarts[0], restarts  # retryable, by contract
    resumed = wait(
        "resume in the driver log",
        lambda: [ln for ln in job.logs("e2e-sft-a2-0").splitlines() if "resuming from" in ln],
        300,
    )
    assert resumed

    # ---- dpo: suspend mid-stage, resume from the step it reached ----------------------------
    job.running("dpo", 1, timeout=900)
    job.step_at_least("dpo", 2, timeout=600)
    t, asked = time.monotonic(), time.time()
    real_cluster.kubectl(
        "patch", "llmtj", "e2e", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": true}}'
    )
    wait(
        "Suspended, pods gone",
        lambda: (
            job.status().get("phase") == "Suspended"
            and not any(n.startswith("e2e-dpo-a1") for n in job.pods())
        ),
        400,
    )
    TIMINGS["dpo: suspended -> pods gone"] = time.monotonic() - t
    ckpts = sorted((root / "e2e" / "dpo" / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert ckpts, "the driver saved nothing before the gang went"
    saved = max(int(p.parent.name.split("-")[1]) for p in ckpts)
    newest = root / "e2e" / "dpo" / "checkpoints" / f"checkpoint-{saved}" / "COMPLETE"
    # Saved after the suspension was asked for (the driver's SIGTERM checkpoint), not finished.
    assert json.loads(newest.read_text())["time"] >= asked, saved
    assert not (root / "e2e" / "dpo" / "result.json").exists()
    real_cluster.kubectl(
        "patch", "llmtj", "e2e", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": false}}'
    )
    job.running("dpo", 2, timeout=600)
    resumed = wait(
        "resume in the driver log",
        lambda: [ln for ln in job.logs("e2e-dpo-a2-0").splitlines() if "resuming from" in ln],
        300,
    )
    assert f"checkpoint-{saved}" in resumed[0], (saved, resumed)

    st = wait("Succeeded", lambda: (s := job.status()).get("phase") == "Succeeded" and s, 900)
    TIMINGS["whole job"] = time.monotonic() - t0

    # ---- what the user sees ------------------------------------------------------------
    for s in st["stages"]:
        final = root / "e2e" / s["name"] / "final"
        assert (final / "config.json").exists() or (final / "adapter_config.json").exists()
        assert s["output"] == f"/storage/e2e/{s['name']}/final"
        # The operator scraped the real driver: the metrics only it exports are in status.
        assert s["progress"]["step"] == s["progress"]["totalSteps"] > 0
        assert {"train_loss", "tokens_per_second"} <= set(s["metrics"]), s["metrics"]
    assert [s["restarts"] for s in st["stages"]] == [1, 1, 0]
    assert len({row["PROGRESS"] for row in seen}) == len(seen), seen  # it moved
    assert {row["STAGE"] for row in seen} >= {"pretrain (1/3)", "sft (2/3)"}, seen
    assert all(row["LOSS"] for row in seen[1:]), seen
    gen = run_cli(
        "generate",
        "--model",
        str(root / "e2e" / "dpo" / "final"),
        "### Question: What color is the sky?\n### Answer:",
    )
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr
    print("\n" + "\n".join(f"{k}: {v:.0f}s" for k, v in TIMINGS.items()))


def test_broken_data_fails_in_the_preflight_before_any_gang(
    real_cluster: Any, team: tuple[str, Path]
) -> None:
    ns, root = team
    broken = root / "data" / "broken.jsonl"
    broken.write_text('{"prompt": "a question", "answer": "no completion column"}\n' * 20)
    broken.chmod(0o666)
    stages = [
        {
            "name": "sft",
            "type": "sft",
            "dataset": {"source": "/storage/data/broken.jsonl", "format": "prompt-completion"},
            "hyperparameters": {"maxSteps": 5, "batchSize": 4, "maxSeqLength": 64},
        }
    ]
    body = manifest("broken", stages)
    t = time.monotonic()
    real_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    job = Job(real_cluster, ns, "broken")
    st = wait("Failed", lambda: (s := job.status()).get("phase") == "Failed" and s, 600)
    TIMINGS["broken data: apply -> Failed"] = time.monotonic() - t
    # The initializer's preflight read the data as training would, and said what is wrong.
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PreflightFailed", failed
    assert "completion" in failed["message"], failed
    assert not [p for p in job.pods() if p.startswith("broken-sft")]  # no gang ever
    print(f"broken data: apply -> Failed {TIMINGS['broken data: apply -> Failed']:.0f}s")
