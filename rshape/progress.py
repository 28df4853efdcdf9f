"""A live progress bar for training: step, reward, accuracy and mean length."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    """`with StepProgress(total, start) as p: p.update(step, metrics)`; silent when disabled."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]}  acc {task.fields[acc]}  len {task.fields[len]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console or Console(stderr=True),
            disable=not enabled, transient=False)
        self._task = self._progress.add_task("rl", total=total, completed=start, reward="-", acc="-", len="-")

    def __enter__(self) -> StepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        self._progress.update(self._task, completed=step, reward=f"{metrics['reward/total']:+.3f}",
                              acc=f"{metrics['accuracy']:.2f}", len=f"{metrics['length/mean']:.1f}")
