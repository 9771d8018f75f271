"""A trial context's checkpoints: what the loop registers, resuming from them, and when they are saved.

:class:`CheckpointMixin` is the checkpoint half of :class:`~adamtune.training.context.TrialContext`
(``checkpoint.py`` says where and how checkpoints are stored); its state is set in the context's
``__init__``. This module imports neither torch, optuna nor mlflow (``checkpoint.py`` imports them when
a checkpoint is saved or restored).

Checkpoints and resuming:
``trial.checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, ...)`` registers the objects
that make the loop resumable: anything with ``state_dict()``/``load_state_dict()``, and
``torch.Generator`` objects (``get_state()``/``set_state()``). Call it once, before ``trial.epochs()``;
without it a loop is not checkpointed. In a search trial that has a checkpoint store, every
``checkpoint_every`` epochs (after the epoch's report; never after the last epoch) the context saves
their states, the global RNG states (torch, CUDA, ``random``, numpy) and the curve so far. When a trial
is a retry of one whose worker died, ``trial.epochs()`` first loads the lineage's latest checkpoint
into the registered objects and the RNGs, restores the curve (re-reported through ``on_resume``) and
yields the epochs after the saved one only. A checkpoint that cannot be used is reported in one warning
line and the trial trains from epoch 1. ``checkpoint_every=None`` is automatic: after the first epoch,
every epoch when ``n_epochs`` times that epoch's time is at least :data:`adamtune.training.checkpoint.AUTO_SECONDS`
(60 s), else never; and when a save takes more than :data:`adamtune.training.checkpoint.AUTO_SHARE` (1%) of an
epoch's training time, every ``ceil(save time / (1% of an epoch))`` epochs instead, so saves stay
under about 1% of the trial's time. ``0`` is never.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from adamtune.training.checkpoint import AUTO_SECONDS, AUTO_SHARE, CheckpointUnusable

log = logging.getLogger(__name__)


class CheckpointMixin:
    """``checkpoint``, ``capture_state`` and the context's resume and save steps.

    See the module docstring. The attributes below are the context's, set by ``TrialContext.__init__``.
    """

    number: int | None
    n_epochs: int
    checkpoint_every: int | None
    resumed_from_epoch: int | None
    checkpoint_seconds: float
    checkpoint_bytes: int
    checkpoints_saved: int
    _checkpoints: Any  # adamtune.training.checkpoint.TrialCheckpoints, or None: no checkpoints
    _registered: dict[str, Any]
    _epochs_started: bool
    _history: list[tuple[int, dict[str, float]]]
    _initial: dict[str, float] | None
    _first_epoch: int
    _last_epoch: int
    _auto: bool
    _clock: float | None
    _last_save_seconds: float
    _save_failed: bool
    _on_resume: Callable[[int, list[tuple[int, dict[str, float]]]], None] | None

    def checkpoint(self, **objects: Any) -> None:
        """Register ``objects`` (by name) to save in this trial's checkpoints and restore when it resumes.

        Each is a ``torch.Generator`` or has ``state_dict()`` and ``load_state_dict()`` (a model, an
        optimizer, a scheduler, a ``GradScaler``...). Call before ``trial.epochs()``. In a search trial with
        a checkpoint store, their states, the RNGs' and the curve are saved every ``checkpoint_every``
        epochs; a retry of the trial restores them and ``trial.epochs()`` continues after the saved epoch.

        Args:
            **objects: The objects by name, e.g. ``model=model, optimizer=optimizer, scheduler=scheduler``.

        Raises:
            RuntimeError: called after ``trial.epochs()`` started.
            TypeError: an object that has no state to save.
        """
        if self._epochs_started:
            raise RuntimeError("call trial.checkpoint(...) before trial.epochs(): it restores what it registers")
        for name, obj in objects.items():
            stateful = hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")
            if not stateful and not (hasattr(obj, "get_state") and hasattr(obj, "set_state")):
                raise TypeError(
                    f"trial.checkpoint({name}=...) needs an object with state_dict()/load_state_dict() "
                    f"or a torch.Generator, got {type(obj).__name__}"
                )
        self._registered.update(objects)

    def _resume(self) -> None:
        """Load the lineage's latest checkpoint into the registered objects, the RNGs and the curve."""
        if self._checkpoints is None or not self._registered or self._history:
            return
        from adamtune.training.checkpoint import restore, restore_rng

        try:
            state = self._checkpoints.load()
            if state is None:
                return
            restore(self._registered, state)
            history = [(int(e), {str(k): float(v) for k, v in metrics.items()}) for e, metrics in state["history"]]
        except CheckpointUnusable as exc:
            log.warning("trial %s: %s; training from epoch 1", self.number, exc)
            return
        except Exception as exc:  # a malformed curve inside a readable checkpoint
            log.warning("trial %s: checkpoint unusable (%s); training from epoch 1", self.number, exc)
            return
        restore_rng(state)
        epoch = int(state["epoch"])
        self._history, self._last_epoch, self._first_epoch = history, epoch, epoch + 1
        if state.get("initial") is not None:
            self._initial = {str(k): float(v) for k, v in state["initial"].items()}
        self.resumed_from_epoch = epoch
        if self._on_resume is not None:
            self._on_resume(epoch, list(history))

    def _interval(self, epoch: int) -> int:
        """Epochs between saves; automatic (see the module docstring) unless ``checkpoint_every`` was given."""
        if not self._auto:
            return self.checkpoint_every or 0
        assert self._clock is not None
        training = time.perf_counter() - self._clock - self.checkpoint_seconds
        per_epoch = max(training, 1e-9) / (epoch - self._first_epoch + 1)
        if self.checkpoint_every is None:  # decided after this run's first epoch
            self.checkpoint_every = 1 if per_epoch * self.n_epochs >= AUTO_SECONDS else 0
        elif self.checkpoint_every > 0 and self._last_save_seconds > 0:  # keep saves under AUTO_SHARE
            self.checkpoint_every = max(1, math.ceil(self._last_save_seconds / (AUTO_SHARE * per_epoch)))
        return self.checkpoint_every

    def capture_state(self) -> dict[str, Any] | None:
        """What a checkpoint of this trial holds now, or None when nothing was registered (imports torch)."""
        if not self._registered:
            return None
        from adamtune.training.checkpoint import capture

        state = capture(self._registered)
        state["history"] = [[e, dict(m)] for e, m in self._history]
        state["initial"] = dict(self._initial) if self._initial is not None else None
        return state

    def _maybe_save(self, epoch: int) -> None:
        if self._checkpoints is None or not self._registered:
            return
        every = self._interval(epoch)
        if every <= 0 or epoch % every:
            return
        started = time.perf_counter()
        try:
            state = self.capture_state()
            assert state is not None
            self.checkpoint_bytes = self._checkpoints.save(epoch, state)
            self.checkpoints_saved += 1
            self._last_save_seconds = time.perf_counter() - started
        except Exception as exc:  # the store is full or away: training goes on, the next save tries again
            if not self._save_failed:
                name = type(exc).__name__
                log.warning("trial %s: could not save a checkpoint (%s: %s); training goes on", self.number, name, exc)
            self._save_failed = True
        finally:
            self.checkpoint_seconds += time.perf_counter() - started
