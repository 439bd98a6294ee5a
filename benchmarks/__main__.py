"""Run benchmarks: `python -m benchmarks [NAME [OPTIONS]]...` (`make bench`).

    python -m benchmarks                      # all of ALL: SFT throughput, the quickstart's
                                              # wall time, the operator at scale
    python -m benchmarks sft                  # one of them by name
    python -m benchmarks sft --samples 500    # options after a name go to that benchmark
    python -m benchmarks gpu                  # one H100/H200 (not in ALL: it needs a GPU)
    python -m benchmarks gpu --smoke          # its CPU check, as CI runs it

The operator benchmark builds (or reuses) the control plane from tests/controlplane.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _sft(argv: list[str]) -> int:
    from benchmarks import sft_throughput

    sft_throughput.main(argv)  # returns its figures; failures raise
    return 0


def _operator(argv: list[str]) -> int:
    from benchmarks import operator_scale

    return int(operator_scale.main(argv) or 0)


def _quickstart(argv: list[str]) -> int:
    from benchmarks import quickstart

    quickstart.main(argv)
    return 0


def _gpu(argv: list[str]) -> int:
    from benchmarks import gpu

    gpu.main(argv)
    return 0


BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "sft": _sft,
    "operator": _operator,
    "quickstart": _quickstart,
    "gpu": _gpu,
}
ALL = ("sft", "quickstart", "operator")


def parse(argv: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, its options)], in order; a word that names a benchmark starts the next one."""
    runs: list[tuple[str, list[str]]] = []
    for word in argv:
        if word in BENCHMARKS:
            runs.append((word, []))
        elif runs:
            runs[-1][1].append(word)
        else:
            sys.exit(f"unknown benchmark {word!r}; choose from {sorted(BENCHMARKS)}")
    return runs or [(name, []) for name in ALL]


if __name__ == "__main__":
    failed = []
    for name, options in parse(sys.argv[1:]):
        print(f"== benchmark {name}", flush=True)
        if BENCHMARKS[name](options) != 0:
            failed.append(name)
    sys.exit(f"failed: {failed}" if failed else 0)
