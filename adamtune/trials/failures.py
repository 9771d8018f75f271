"""Trials that fail with errors, as a worker sees them: the log line of a failure, and the streak of
failures that stops the worker.

What the terminal shows (:class:`FailureLog`): the traceback of the first failure of a search, in full
(the user's own frames, from the trainer process where it ran), then one line per further failure
(``trial 2 failed: ValueError: boom (traceback shown above for trial 0)``). Each worker keeps its own
log; a multi-worker search's parent process, which prints every worker's lines, keeps one more over
them all (:meth:`FailureLog.relay`), so the whole search shows one traceback.

A ``fit`` that broke its contract (:class:`~adamtune.core.errors.ContractError`: it reported nothing, or
not the objective) is no traceback at all: its one line names the fix, and it stops the worker at once
(the same code breaks it on every trial); the trial is recorded as failed first.

``MAX_CONSECUTIVE_FAILURES`` trials in a row that raised exceptions mean the task or its data is broken,
not the settings: the worker stops with :class:`TooManyFailures` rather than burn the study's trials. A
trial that failed because the study database went away says nothing about the task (the worker re-queues
it) and, like any trial that did not fail with an error, ends the streak.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from adamtune.core.errors import AdamtuneError, ContractError
from adamtune.storage.db_errors import is_transient_db_error
from adamtune.training.trainer import describe_failure

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3

#: The log record attribute that carries a failure's parts to a multi-worker search's parent process.
FAILURE_RECORD_KEY = "adamtune_failure"


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
            ContractError: ``error`` itself: the task broke its contract (the trial is told FAIL already).
        """
        if isinstance(error, ContractError):
            raise error
        if trial.state != TrialState.FAIL or error is None or is_transient_db_error(error):
            self.count = 0
            return
        self.count += 1
        if self.count >= MAX_CONSECUTIVE_FAILURES:
            raise TooManyFailures(
                f"{self.count} trials in a row failed with errors (see the log above); check task {task!r} and its data"
            )


class FailureLog:
    """The lines of failed trials: ``<what> failed: <type>: <message>``, with the traceback of training
    code (wherever it ran) the first time, and a pointer to it after that."""

    def __init__(self) -> None:
        #: ``what`` of the failure whose traceback was shown (None: none yet).
        self.shown_for: str | None = None

    def text(self, what: str, kind: str, message: str, traceback_text: str) -> str:
        """The text for one failure (``what``: e.g. ``trial 2``); remembers a traceback it shows."""
        head = f"{what} failed: {kind}: {message}"
        if not traceback_text:
            return head
        if self.shown_for is None:
            self.shown_for = what
            return f"{head}\n{traceback_text.rstrip()}"
        return f"{head} (traceback shown above for {self.shown_for})"

    def log(self, what: str, exc: BaseException) -> None:
        """Log the failure of ``what`` with ``exc`` (a warning); its parts ride along for :meth:`relay`."""
        kind, text = describe_failure(exc)
        parts = (what, kind, str(exc), text)
        log.warning("%s", self.text(*parts), extra={FAILURE_RECORD_KEY: parts})

    def relay(self, record: logging.LogRecord) -> str:
        """A worker process's formatted ``record`` as the parent prints it: a failure's traceback only if
        no worker's was shown yet (the worker's own prefix, e.g. ``[w1 cpu] WARNING:``, kept)."""
        message = record.getMessage()
        parts: Any = getattr(record, FAILURE_RECORD_KEY, None)
        if parts is None:
            return message
        what, kind, text, traceback_text = parts
        start = message.find(f"{what} failed: ")
        return message[: max(start, 0)] + self.text(what, kind, text, traceback_text)
