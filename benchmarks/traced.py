"""Run the `llmtrain` CLI under tracemalloc; each SIGUSR1 writes where its memory is.

    python -m benchmarks.traced OUT_PREFIX operator --namespace x ...
    kill -USR1 PID      # OUT_PREFIX.1.txt: by package, by line, and the change since the last

`benchmarks.operator_scale --tracemalloc` starts the operator this way and signals it when
idle and at its peak. tracemalloc sees Python allocations only (not the interpreter, code
objects' arenas or C libraries), and slows the process down: not for the timing figures.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 1  # the allocating line; more frames make imports crawl


def package(filename: str) -> str:
    """`.../site-packages/kopf/_core/x.py` -> `kopf`; our own code -> `llmtrain.<dir>`."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    for mine in ("operator", "trainer", "cli"):
        if mine in parts:
            return f"llmtrain.{mine}"
    if "python3" in filename and "lib" in parts:
        return "stdlib:" + parts[-1].removesuffix(".py")
    return parts[-1] if parts else "?"


def report(snap: tracemalloc.Snapshot, last: tracemalloc.Snapshot | None, k: int = 20) -> str:
    by_pkg: dict[str, int] = {}
    for st in snap.statistics("filename"):
        name = package(st.traceback[0].filename)
        by_pkg[name] = by_pkg.get(name, 0) + st.size
    total = sum(by_pkg.values())
    lines = [f"traced Python memory: {total / 2**20:.1f} MiB", "  by package (allocating frame):"]
    for name, size in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:k]:
        lines.append(f"    {size / 2**20:7.2f} MiB  {name}")
    lines.append("  top lines:")
    for st in snap.statistics("lineno")[:k]:
        lines.append(f"    {st.size / 2**20:7.2f} MiB  {st.count:7d}  {st.traceback[0]}")
    if last is not None:
        lines.append("  grown since the previous snapshot (by line):")
        for d in snap.compare_to(last, "lineno")[:k]:
            lines.append(
                f"    {d.size_diff / 2**20:+7.2f} MiB  {d.count_diff:+7d}  {d.traceback[0]}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    tracemalloc.start(FRAMES)
    snaps: list[tracemalloc.Snapshot] = []

    def dump(signum: int, frame: FrameType | None) -> None:
        ours = tracemalloc.Filter(False, tracemalloc.__file__)
        snap = tracemalloc.take_snapshot().filter_traces([ours])
        text = report(snap, snaps[-1] if snaps else None)
        snaps.append(snap)
        Path(f"{out}.{len(snaps)}.txt").write_text(text)

    signal.signal(signal.SIGUSR1, dump)
    from llmtrain.cli.main import main as cli

    sys.argv = ["llmtrain", *args]
    cli()


if __name__ == "__main__":
    main()
