"""The terminal view of a local run (`llmtrain run`), drawn from each stage's `progress.json`.

    view = ProgressView()
    view.stage_started(cfg, resumed_from=None); view.update(cfg, stage_dir / PROGRESS)
    view.stage_finished(cfg, result)

On a terminal: one rich progress bar per stage (step/total, loss, tokens/s, ETA). Elsewhere
(CI logs, pipes): plain lines, at most one every `every` seconds, so logs stay readable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmtrain.trainer.contract import StageConfig, read_json


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


class ProgressView:
    def __init__(self, console: Console | None = None, every: float = 10.0):
        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal
        self.every = every
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_line = 0.0
        self._last_step = -1

    def note(self, text: str) -> None:
        self.console.print(text, markup=False)

    def stage_started(self, cfg: StageConfig, resumed_from: str | None) -> None:
        st = cfg.stage
        how = f"resuming from {resumed_from}" if resumed_from else "starting"
        self.note(f"▶ stage {st.name} ({st.type}) {how} → {cfg.output_dir}")
        self._last_step, self._last_line = -1, 0.0
        if self.live:
            self._progress = Progress(
                TextColumn(f"[bold]{st.name}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s  ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(st.name, total=None, loss="-", tps="-")

    def update(self, cfg: StageConfig, progress_file: Path) -> None:
        p = read_json(progress_file)
        if not p:  # not written yet
            return
        step, total = p.get("step", 0), p.get("total_steps") or None
        loss, tps = _fmt(p.get("loss"), ".4f"), _fmt(p.get("tokens_per_second"), ",.0f")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, total=total, loss=loss, tps=tps)
            return
        now = time.monotonic()
        if step != self._last_step and (now - self._last_line >= self.every or step == total):
            eta = p.get("eta_seconds")
            eta_s = (
                time.strftime("%H:%M:%S", time.gmtime(eta)) if isinstance(eta, int | float) else "-"
            )
            self.note(
                f"  {cfg.stage.name}: step {step}/{total or '?'}  loss {loss}  "
                f"{tps} tok/s  ETA {eta_s}"
            )
            self._last_line, self._last_step = now, step

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def stage_finished(self, cfg: StageConfig, result: dict[str, Any]) -> None:
        self._stop()
        self.note(
            f"✔ stage {cfg.stage.name} done: {result.get('steps', '?')} steps, "
            f"final loss {_fmt(result.get('final_loss'), '.4f')} → {result.get('output', '')}"
        )

    def stage_skipped(self, cfg: StageConfig) -> None:
        self.note(f"✔ stage {cfg.stage.name} already complete, skipping ({cfg.output_dir})")
