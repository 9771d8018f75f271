"""Trials that fail with errors, as a worker sees them: the log line of a failure, and the streak of
failures that stops the worker.

``MAX_CONSECUTIVE_FAILURES`` trials in a row that raised exceptions mean the task or its data is broken,
not the settings: the worker stops with :class:`TooManyFailures` rather than burn the study's trials. A
trial that failed because the study database went away says nothing about the task (the worker re-queues
it) and, like any trial that did not fail with an error, ends the streak.
"""

from __future__ import annotations

import logging

from optuna.trial import FrozenTrial, TrialState

from adamtune.core.errors import AdamtuneError
from adamtune.storage.db_errors import is_transient_db_error
from adamtune.training.trainer import describe_failure

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3


class TooManyFailures(AdamtuneError):
    """Every recent trial failed with an exception: the task or its data is broken, not the settings."""


class FailureStreak:
    """Counts the trials in a row that failed with an error; :meth:`note` raises at ``MAX_CONSECUTIVE_FAILURES``."""

    def __init__(self) -> None:
        self.count = 0

    def note(self, trial: FrozenTrial, error: Exception | None, task: str) -> None:
        """Count ``trial`` of ``task`` (named in the error), which ran with ``error`` (None: it raised nothing).

        Raises:
            TooManyFailures: this is the ``MAX_CONSECUTIVE_FAILURES``-th trial in a row that failed with an error.
        """
        if trial.state != TrialState.FAIL or error is None or is_transient_db_error(error):
            self.count = 0
            return
        self.count += 1
        if self.count >= MAX_CONSECUTIVE_FAILURES:
            raise TooManyFailures(
                f"{self.count} trials in a row failed with errors (see the log above); check task {task!r} and its data"
            )


def log_failure(what: str, exc: BaseException) -> None:
    """``<what>: <type>: <message>`` and the traceback of training code (once), wherever it ran."""
    kind, text = describe_failure(exc)
    log.warning("%s: %s: %s%s", what, kind, exc, f"\n{text.rstrip()}" if text else "")
