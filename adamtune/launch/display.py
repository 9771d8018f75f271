"""A search's callbacks as ``adamtune.search(...)`` passes them to :func:`~adamtune.launch.search.run_search`.

:class:`SearchDisplay` calls the caller's hooks and, when a progress display was asked for, drives the live
display on stderr with a line per finished trial and confirmation run above it: what ``adamtune search``
shows. Each trial's line ends with the stop rule's short verdict (``core/convergence.py``), computed from
the trials the display has seen: those it was called with and those of its periodic reads of the study,
so it costs no extra read. Nothing heavy is imported until the display starts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamtune.confirm.stage import ConfirmRun
    from adamtune.core.config import StudySpec
    from adamtune.storage.outcomes import Counts

log = logging.getLogger("adamtune")


class SearchDisplay:
    """A search's callbacks: the caller's, plus the live progress display when asked for."""

    def __init__(
        self,
        progress: bool,
        on_start: Callable[[StudySpec, int], None] | None,
        on_trial: Callable[[Any, Any], None] | None,
        on_log: Callable[[str], None] | None,
        on_progress: Callable[[Counts, float | None], None] | None,
        on_confirm_run: Callable[[ConfirmRun], None] | None,
    ) -> None:
        self.wanted = progress
        self.bar: Any = None
        self.spec: StudySpec | None = None
        self._on_start, self._on_trial, self._on_log = on_start, on_trial, on_log
        self._on_progress, self._on_confirm_run = on_progress, on_confirm_run
        self._seen: dict[int, Any] = {}  # finished trials by number: what the convergence verdict reads

    def start(self, spec: StudySpec, already: int) -> None:
        self.spec = spec
        if self._on_start is not None:
            self._on_start(spec, already)
        if self.wanted:
            from adamtune.report.progress import SearchProgress

            bar = SearchProgress(spec.study_name, spec.n_trials, spec.objective, timeout=spec.timeout)
            self.bar = bar.__enter__()

    def trial(self, study: Any, trial: Any) -> None:
        if self.bar is not None and self.spec is not None:
            from adamtune.report.trial_lines import describe_trial

            self._seen[trial.number] = trial
            if self.bar.add(trial, self.spec.direction):  # else counted without reading the study
                self._update_from(study)
            self.bar.log(describe_trial(trial) + self.verdict())
        if self._on_trial is not None:
            self._on_trial(study, trial)

    def _update_from(self, study: Any) -> None:
        from adamtune.launch.search import best_value
        from adamtune.storage.outcomes import count_trials

        try:
            trials = study.get_trials(deepcopy=False)
        except Exception:  # the database is away for a moment: the worker retries; the display waits
            return
        assert self.spec is not None
        self._seen.update((t.number, t) for t in trials if t.state.is_finished())
        self.bar.update(count_trials(trials), best_value(trials, self.spec.direction))

    def verdict(self) -> str:
        """``  [<the stop rule's short verdict>]`` on the trials seen so far (``Convergence.short``), once the
        seed noise is measured or the rule is on (``--stop-when-converged``); else nothing."""
        from adamtune.report.convergence import trials_convergence

        assert self.spec is not None
        verdict = trials_convergence(list(self._seen.values()), self.spec.direction)
        return f"  [{verdict.short()}]" if verdict.noise is not None or self.spec.stop_when_converged else ""

    def log(self, line: str) -> None:
        if self._on_log is not None:
            self._on_log(line)
        elif self.bar is not None:
            self.bar.log(line)
        elif self.wanted:  # a terminal display was asked for: its lines before it starts go to stderr
            print(line, file=sys.stderr, flush=True)
        else:
            log.info(line)

    def progress(self, counts: Counts, best: float | None) -> None:
        if self.bar is not None:
            self.bar.update(counts, best)
        if self._on_progress is not None:
            self._on_progress(counts, best)

    def confirm_run(self, run: ConfirmRun) -> None:
        if self.wanted:
            from adamtune.report.trial_lines import describe_confirm_run

            self.log(describe_confirm_run(run))
        if self._on_confirm_run is not None:
            self._on_confirm_run(run)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
