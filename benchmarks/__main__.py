"""Run every benchmark in turn: `python -m benchmarks` (`make bench`)."""

from __future__ import annotations

from benchmarks import sft_throughput

if __name__ == "__main__":
    sft_throughput.main([])
