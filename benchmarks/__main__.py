"""Run every benchmark in turn: `python -m benchmarks` (`make bench`).

    python -m benchmarks            # all: SFT throughput, then the operator at scale
    python -m benchmarks sft        # one of them by name

The operator benchmark builds (or reuses) the control plane from tests/controlplane.
"""

from __future__ import annotations

import sys

from benchmarks import operator_scale, sft_throughput


def _sft() -> int:
    sft_throughput.main([])  # returns its figures; failures raise
    return 0


BENCHMARKS = {"sft": _sft, "operator": lambda: operator_scale.main([])}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    failed = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        if BENCHMARKS[name]() != 0:
            failed.append(name)
    sys.exit(f"failed: {failed}" if failed else 0)
