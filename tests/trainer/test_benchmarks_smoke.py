"""The GPU benchmark's CPU smoke run (`python -m benchmarks.gpu --smoke`): it keeps working.

The real run needs an H100/H200 (benchmarks/gpu.py); here tiny shapes and two steps of each
part (pretrain MFU, LoRA SFT against TRL, QLoRA against LoRA memory) prove the code paths, and
the output must carry every figure it reports on a GPU. About 60 s on 2 idle cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    tail = "\n".join(lines[-8:])
    for figure in (
        "pretrain achieved:",
        "TFLOP/s",
        "pretrain MFU:",
        "LoRA SFT tokens/s: ours",
        "TRL SFTTrainer",
        "peak GPU memory: QLoRA",
    ):
        assert figure in tail, f"{figure!r} missing from:\n{tail}"
    figures = json.loads(out.read_text())
    assert figures["smoke"] is True
    pre = figures["pretrain"]
    assert pre["tokens"] > 0 and pre["flops_per_second"] > 0
    assert pre["mfu"] is None  # no peak for a CPU: no made-up MFU
    for run in ("ours-lora", "ours-qlora", "trl-lora"):
        assert figures["sft"][run]["tokens_per_second"] > 0, run
        assert figures["sft"][run]["steps"] == 2, run
