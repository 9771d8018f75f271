"""Errors that reach the user as one line.

Every failure a user can cause or fix (bad input, a missing dataset, an unreachable database) is raised
as an ``AdamtuneError``. The message is the whole user-facing text: it names the problem and the
fix. The command line (``cli/main.py``) prints it as ``Error: <message>`` on stderr, without a traceback,
and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class AdamtuneError(Exception):
    """Base class: a problem the user can fix, described in one line.

    Catch it to handle every error adamtune reports to a user; ``str(error)`` is the message.

    Attributes:
        exit_code: The exit status of ``adamtune`` for this error (each subclass sets its own).
    """

    exit_code: int = 1


class ConfigError(AdamtuneError):
    """A study file, search space, or command-line value is invalid."""

    exit_code = 2


class TaskError(AdamtuneError):
    """A task name is unknown, or a user task cannot be imported or is malformed."""

    exit_code = 2


class ContractError(TaskError, ValueError):
    """A task's own training code broke its contract with adamtune.

    ``fit`` returned without calling ``trial.report``, or reported without the study's objective. The same
    code breaks it on every trial, so a search stops at the first one (a ``ValueError`` too, as
    ``trial.report`` documents).
    """


class StorageError(AdamtuneError):
    """The study database URL is unusable, unreachable, or the study does not exist."""

    exit_code = 3


class DataError(AdamtuneError):
    """A dataset is missing, corrupted, unsafe to extract, or cannot be downloaded."""

    exit_code = 4


class DeviceError(AdamtuneError):
    """A requested device (for example ``cuda:3``) does not exist on this machine."""

    exit_code = 2


class TrackingError(AdamtuneError):
    """The MLflow tracking store is unusable."""

    exit_code = 5
