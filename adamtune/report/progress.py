"""The live progress display of a search: trials finished, best value so far, time left.

Rendered with rich on stderr. When stderr is not a terminal (CI, pipes, tests) rich prints no live
bar, and one log line per trial remains.
"""

from __future__ import annotations

import dataclasses
import math
import time
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adamtune.storage.outcomes import Counts, trial_state

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

#: How often a search's display reads the whole study for its counts (between reads it counts the trials
#: this process finished: each read is a database query on the trial loop's path).
READ_SECONDS = 2.0


class SearchProgress:
    """A context manager showing a study's progress; call :meth:`update` whenever counts change."""

    def __init__(
        self,
        study_name: str,
        target: int,
        objective: str,
        console: Console | None = None,
        timeout: float | None = None,
    ) -> None:
        """``timeout``: the search's time budget in seconds, if any: the time left counts down to it, and a
        search given only a time budget (its target the cap ``TIMED_TRIAL_CAP``) shows no trial total."""
        from adamtune.core.budget import TIMED_TRIAL_CAP

        self.console = console or Console(stderr=True)
        self.target = target
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.objective = objective
        self.started = time.monotonic()
        self.start_count: int | None = None
        self._progress = Progress(
            TextColumn(f"[bold]{study_name}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials{task.fields[running]}  best {task.fields[best]}  elapsed"),
            TimeElapsedColumn(),
            TextColumn("left {task.fields[left]}"),
            console=self.console,
            transient=False,
            auto_refresh=self.console.is_terminal,  # no live bar elsewhere: no thread redrawing it
            refresh_per_second=2,
        )
        self.counts: Counts | None = None
        self.best: float | None = None
        self._read_at = -math.inf
        total = None if target >= TIMED_TRIAL_CAP else target
        self._task = self._progress.add_task("search", total=total, best="-", left="-", running="")

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, counts: Counts, best: float | None, *, read: bool = True) -> None:
        """Show ``counts.finished`` of the target, trials running (all workers, all machines), the best
        objective value, and an estimate of time left (``read``: counts just read from the study)."""
        if read:
            self._read_at = time.monotonic()
        self.counts, self.best = counts, best
        done = counts.finished
        if self.start_count is None:
            self.start_count = done
        best_text = f"{self.objective} {best:.4g}" if best is not None and math.isfinite(best) else "-"
        running = f" ({counts.running} running)" if counts.running else ""
        self._progress.update(
            self._task, completed=min(done, self.target), best=best_text, left=self._left(done), running=running
        )

    def add(self, trial: FrozenTrial, direction: str) -> bool:
        """Count one more trial that this process saw finish, without reading the study. Returns whether the
        caller should read the study now instead (no counts yet, or the last read is ``READ_SECONDS`` old:
        other workers' trials, and running ones, are counted only by a read)."""
        if self.counts is None or time.monotonic() - self._read_at >= READ_SECONDS:
            return True
        state = trial_state(trial)
        if state not in ("complete", "pruned", "diverged", "failed"):
            return True
        counts = dataclasses.replace(self.counts, **{state: getattr(self.counts, state) + 1})
        best = self.best
        if state == "complete" and trial.value is not None and math.isfinite(trial.value):
            better = min if direction == "minimize" else max
            best = trial.value if best is None else better(best, trial.value)
        self.update(counts, best, read=False)
        return False

    def _left(self, done: int) -> str:
        made = done - (self.start_count or 0)
        now = time.monotonic()
        seconds = None if made <= 0 or done >= self.target else (now - self.started) / made * (self.target - done)
        if self.deadline is not None:  # a time budget: never more than the time left
            seconds = max(0.0, self.deadline - now) if seconds is None else min(seconds, self.deadline - now)
        if seconds is None:
            return "-"
        minutes, secs = divmod(int(max(0.0, seconds)), 60)
        return f"{minutes}:{secs:02d}"

    def log(self, message: str) -> None:
        """Print a line above the live bar."""
        self._progress.console.print(message, highlight=False, markup=False, soft_wrap=True)
