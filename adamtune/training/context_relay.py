"""A trial context whose run trains in a trainer process: its calls there, played on this side.

:class:`RelayMixin` is the part of :class:`~adamtune.training.context.TrialContext` that
``trainer_client.py`` uses: what the trainer process needs to rebuild the context there, the reports and
the restored curve relayed from its context to this one's hooks (and the hooks' prune answer back), and
the run's outcome as plain data (:meth:`~RelayMixin.snapshot` there, :meth:`~RelayMixin.adopt` here).
Its state is set in the context's ``__init__``. This module imports neither torch, optuna nor mlflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamtune.training.stops import StopTrial


class RelayMixin:
    """See the module docstring. The attributes below are the context's, set by ``TrialContext.__init__``."""

    state: str
    diverged_epoch: int | None
    resumed_from_epoch: int | None
    checkpoint_every: int | None
    checkpoint_seconds: float
    checkpoint_bytes: int
    checkpoints_saved: int
    _checkpoints: Any
    _checkpoint_dir: Path | None
    _history: list[tuple[int, dict[str, float]]]
    _initial: dict[str, float] | None
    _last_epoch: int
    _stop: StopTrial | None
    _on_epoch: Callable[[int, Mapping[str, float], bool], bool] | None
    _on_resume: Callable[[int, list[tuple[int, dict[str, float]]]], None] | None

    @property
    def checkpoints(self) -> Any:
        """The run's ``checkpoint.TrialCheckpoints`` (None: no checkpoints)."""
        return self._checkpoints

    @property
    def checkpoint_dir_setting(self) -> Path | None:
        """The scratch directory given to this context (None: a temporary one on first use)."""
        return self._checkpoint_dir

    def forward_report(self, epoch: int, record: Mapping[str, float], diverged: bool) -> bool:
        """A report of this run's context in the trainer process (already checked there).

        Kept in the curve and given to adamtune's hook.

        Args:
            epoch: The reported epoch.
            record: Its metrics, by stored name.
            diverged: The epoch diverged (the hook's answer is then ignored).

        Returns:
            The hook's prune answer.
        """
        self._history.append((epoch, dict(record)))
        self._last_epoch = epoch
        if self._on_epoch is None:
            return False
        return bool(self._on_epoch(epoch, record, diverged)) and not diverged

    def forward_resume(self, epoch: int, history: list[tuple[int, dict[str, float]]]) -> None:
        """The trainer process restored a checkpoint of ``epoch`` with this curve.

        Args:
            epoch: The restored checkpoint's epoch.
            history: Its curve, ``(epoch, metrics)`` pairs.
        """
        self._history, self._last_epoch, self.resumed_from_epoch = list(history), epoch, epoch
        if self._on_resume is not None:
            self._on_resume(epoch, list(history))

    def snapshot(self) -> dict[str, Any]:
        """This run's outcome as plain data (what ``adopt`` takes).

        Its state, curve, untrained metrics, resume and checkpoint counts. Holds no data, hook, model or
        store, so it pickles.
        """
        return {
            "state": self.state,
            "diverged_epoch": self.diverged_epoch,
            "history": self._history,
            "initial": self._initial,
            "last_epoch": self._last_epoch,
            "stop": self._stop,
            "resumed_from_epoch": self.resumed_from_epoch,
            "checkpoint_every": self.checkpoint_every,
            "checkpoint_seconds": self.checkpoint_seconds,
            "checkpoint_bytes": self.checkpoint_bytes,
            "checkpoints_saved": self.checkpoints_saved,
        }

    def adopt(self, snapshot: Mapping[str, Any]) -> None:
        """Take over the outcome of the same run trained elsewhere.

        Args:
            snapshot: The ``snapshot`` of its context there.
        """
        self.state, self.diverged_epoch = snapshot["state"], snapshot["diverged_epoch"]
        self._history = [(int(e), dict(m)) for e, m in snapshot["history"]]
        self._initial = dict(snapshot["initial"]) if snapshot["initial"] is not None else None
        self._last_epoch, self._stop = snapshot["last_epoch"], snapshot["stop"]
        self.resumed_from_epoch, self.checkpoint_every = snapshot["resumed_from_epoch"], snapshot["checkpoint_every"]
        self.checkpoint_seconds, self.checkpoint_bytes = snapshot["checkpoint_seconds"], snapshot["checkpoint_bytes"]
        self.checkpoints_saved = snapshot["checkpoints_saved"]
