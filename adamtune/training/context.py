"""``TrialContext``: the one seam between adamtune and training code (its contract: the class docstring).

A user's ``fit(trial)``, the built-in trainer (``runner.py``) and the Lightning callback all train through a
context; adamtune's side of it (``objective.py``, ``runner.py``) turns the reports into Optuna values, pruning
decisions, MLflow curves and the trial's result. Its parts: ``stops.py`` (the exceptions it raises),
``context_checkpoints.py`` and ``context_relay.py`` (a run trained in a trainer process). This module
imports neither torch, optuna nor mlflow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamtune.core.errors import ContractError
from adamtune.core.metrics import SPLITS, bare_name, check_metric_name
from adamtune.training.context_checkpoints import CheckpointMixin
from adamtune.training.context_relay import RelayMixin
from adamtune.training.stops import StopTrial, TrialDiverged, TrialPruned

if TYPE_CHECKING:
    from adamtune.core.curves import Curves
    from adamtune.core.folds import Fold
    from adamtune.core.space import AdamParams

#: A ``loss`` this many times the reference loss is a blow-up (the built-in trainer's factor).
DIVERGENCE_FACTOR = 10.0

#: ``on_epoch(epoch, metrics, diverged)``: adamtune's side of each epoch's report (MLflow curves, Optuna's
#: intermediate values); return True to prune the trial. ``diverged`` epochs are passed for the curves
#: only: their return value is ignored, the trial stops as diverged.
EpochHook = Callable[[int, Mapping[str, float], bool], bool]
#: ``on_resume(epoch, history)``: a checkpoint of ``epoch`` was restored; ``history`` is its curve
#: (``(epoch, metrics)`` pairs) for adamtune's side to re-report (Optuna, MLflow).
ResumeHook = Callable[[int, list[tuple[int, dict[str, float]]]], None]


class TrialContext(CheckpointMixin, RelayMixin):
    """One training run's settings and its reports: what a task's ``fit(trial)`` receives.

    adamtune creates it; its arguments are its attributes (``trial.params``...). ``fit`` calls
    ``make_optimizer``, loops ``for epoch in trial.epochs():`` and calls ``report`` once per epoch,
    which may raise ``TrialPruned`` or ``TrialDiverged`` (``StopTrial``): let them propagate
    (caught, the trial ends all the same). ``checkpoint`` makes the loop resumable.

    A trial diverges at a report (or pending ``log``) with a non-finite value, or whose ``loss`` exceeds
    ``DIVERGENCE_FACTOR`` times the reference: the ``report_initial`` loss, else the first epoch's.
    It then scores as the untrained model, else its worst finite report, else ±inf (as in ``train.py``).

    Args:
        params: The trial's Adam settings (``AdamParams``).
        n_epochs: The epochs to train.
        batch_size: The batch size.
        seed: The run's seed, already applied to torch, ``random`` and numpy when ``fit`` starts.
        device: A device name such as ``"cpu"`` or ``"cuda:1"``.
        objective: The study's objective, bare (``mae``) or stored (``val_mae``).
        direction: ``"minimize"`` or ``"maximize"``.
        split: Where reports are measured: ``"val"`` in the search and confirmation, ``"test"`` in verify.
        number: The Optuna trial's number (None outside a search trial).
        checkpoint_dir: The trial's scratch directory (default: a temporary one, see ``checkpoint_dir``).
        data: What the task's ``data`` function returned, loaded once per worker.
        on_epoch: adamtune's side of each report (``EpochHook``).
        checkpoints: The run's checkpoint store (``checkpoint.TrialCheckpoints``; None: no checkpoints).
        checkpoint_every: Epochs between checkpoints (0: never; None: automatic).
        on_resume: adamtune's side of a restored checkpoint (``ResumeHook``).
        fold: A confirmation run's [Fold][adamtune.core.folds.Fold] (``LoopTask(folds=True)`` only; else None).
    """

    def __init__(
        self,
        *,
        params: AdamParams,
        n_epochs: int,
        batch_size: int,
        seed: int,
        device: str,
        objective: str,
        direction: str = "minimize",
        split: str = "val",
        number: int | None = None,
        checkpoint_dir: Path | None = None,
        data: Any = None,
        on_epoch: EpochHook | None = None,
        checkpoints: Any = None,
        checkpoint_every: int | None = None,
        on_resume: ResumeHook | None = None,
        fold: Fold | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.params = params
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.split = split
        self.number = number
        self.data = data
        self.fold = fold
        self.objective = bare_name(objective)
        self.direction = direction
        self._checkpoint_dir = checkpoint_dir
        self._on_epoch = on_epoch
        self._first_epoch = 1  # a restored checkpoint (issue 13) moves this past the last saved epoch
        self._current: int | None = None
        self._epochs_started = False
        self._last_epoch = 0
        self._initial: dict[str, float] | None = None
        self._pending_log: dict[str, float] = {}
        self._history: list[tuple[int, dict[str, float]]] = []
        self._stop: StopTrial | None = None
        self.state = "running"  # running -> pruned | diverged (complete is decided by the caller)
        self.diverged_epoch: int | None = None
        self._checkpoints = checkpoints  # adamtune.checkpoint.TrialCheckpoints, or None: no checkpoints
        self.checkpoint_every = checkpoint_every
        self._auto = checkpoint_every is None
        self._last_save_seconds = 0.0
        self._on_resume = on_resume
        self._registered: dict[str, Any] = {}
        self._clock: float | None = None
        self._save_failed = False
        self.resumed_from_epoch: int | None = None
        self.checkpoint_seconds = 0.0  # time spent saving checkpoints in this run
        self.checkpoint_bytes = 0  # size of the last checkpoint written
        self.checkpoints_saved = 0
        #: The epochs at which adamtune's side may prune (its ``on_epoch`` answer matters); None: any epoch.
        #: A trainer in another process waits for an answer only at these (``trainer_server.py``).
        self.prune_epochs: frozenset[int] | None = None

    # ---- the user's side -------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        """This trial's scratch directory for the loop's own files, created on first use (not for checkpoints)."""
        if self._checkpoint_dir is None:
            import tempfile

            self._checkpoint_dir = Path(tempfile.mkdtemp(prefix="adamtune-trial-"))
        self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self._checkpoint_dir

    def make_optimizer(self, model_or_parameters: Any) -> tuple[Any, Any]:
        """``(optimizer, scheduler)``: the sampled Adam/AdamW; call ``scheduler.step()`` after every step.

        Args:
            model_or_parameters: A model or its parameters (see ``adamtune.training.optim.make_optimizer``).
        """
        from adamtune.training.optim import make_optimizer

        return make_optimizer(model_or_parameters, self.params)

    def epochs(self) -> Iterator[int]:
        """Yield the epochs to train, 1..``n_epochs`` (after a resumed checkpoint's); stop once the trial stopped.

        Raises:
            RuntimeError: iterated a second time in one trial.
        """
        if self._epochs_started:
            raise RuntimeError("trial.epochs() runs once per trial; keep one loop over it")
        self._epochs_started = True
        return self._epoch_iterator()

    def _epoch_iterator(self) -> Iterator[int]:
        self._resume()
        self._clock = time.perf_counter()
        try:
            for epoch in range(self._first_epoch, self.n_epochs + 1):
                if self._stop is not None:
                    return
                self._current = epoch
                yield epoch
                if self._stop is None and epoch < self.n_epochs and self._last_epoch == epoch:
                    self._maybe_save(epoch)
        finally:
            self._current = None

    def report(self, **metrics: Any) -> None:
        """Record this epoch's metrics on ``trial.split``; may stop the trial.

        Inside ``trial.epochs()`` a report belongs to the current epoch (once per epoch: put every metric in
        one call); outside it, to the epoch after the last report.

        Args:
            **metrics: Bare names (``loss=``, ``mae=``, stored as ``val_loss``...) including the objective;
                Python numbers, numpy scalars or one-element tensors.

        Raises:
            TrialPruned, TrialDiverged: adamtune ends the trial here (do not catch them).
            ValueError, TypeError: no metrics, no objective, a bad name or value, two reports in one epoch.
        """
        self._report(None, metrics)

    def report_initial(self, **metrics: Any) -> None:
        """Record the untrained model's metrics on ``trial.split`` (optional, before the first epoch).

        Args:
            **metrics: As for ``report``: the reference of the blow-up rule, a diverged trial's score.

        Raises:
            ValueError, TypeError: as for ``report``, or called after an epoch was reported.
        """
        if self._history or self._initial is not None:
            raise ValueError("trial.report_initial(...) goes before the first epoch's report, once")
        self._initial = self._split_metrics(metrics, "trial.report_initial")

    def log(self, **metrics: Any) -> None:
        """Record metrics of no split, stored under their own names with the epoch's next report.

        Args:
            **metrics: E.g. ``train_loss=``, ``lr=`` (logged after the last report: dropped).

        Raises:
            ValueError, TypeError: a bad name (``val_``/``test_`` prefixes are for reports) or value.
        """
        for name, value in metrics.items():
            check_metric_name(name, "trial.log")
            self._pending_log[name] = _to_float(value, name)

    # ---- adamtune's side -------------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True once the run was pruned or diverged."""
        return self._stop is not None

    @property
    def stop_reason(self) -> StopTrial | None:
        """The ``TrialPruned``/``TrialDiverged`` that stopped the run, or None."""
        return self._stop

    @property
    def history(self) -> list[tuple[int, dict[str, float]]]:
        """``(epoch, metrics)`` of every reported epoch, metrics under their stored names."""
        return list(self._history)

    @property
    def initial(self) -> dict[str, float] | None:
        """The untrained model's metrics (stored names), if ``report_initial`` was called."""
        return dict(self._initial) if self._initial is not None else None

    @property
    def objective_name(self) -> str:
        """The stored name of the objective on this context's split, e.g. ``val_mae``."""
        return f"{self.split}_{self.objective}"

    def no_better_than_untrained(self) -> bool:
        """True when the last reported objective is not better than the untrained model's (``report_initial``).

        Such a run learned nothing (a far too large learning rate often leaves a network at chance level
        without blowing up); adamtune labels it diverged. False without untrained metrics or a report.
        """
        name = self.objective_name
        untrained = (self._initial or {}).get(name)
        if untrained is None or not math.isfinite(untrained) or not self._history:
            return False
        last = self._history[-1][1].get(name, math.nan)
        if not math.isfinite(last):
            return True
        return last >= untrained if self.direction == "minimize" else last <= untrained

    def report_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """``report`` for an explicit ``epoch`` (integrations whose loop counts epochs, e.g. Lightning).

        Args:
            epoch: The epoch (1-based) the metrics belong to.
            metrics: The epoch's metrics by bare name.
        """
        self._report(epoch, metrics)

    def prune(self, epoch: int) -> None:
        """Stop the trial as pruned at ``epoch`` (decided after the report): raises ``TrialPruned``.

        Args:
            epoch: The epoch whose report was the last.
        """
        self._stop_as(TrialPruned(f"pruned at epoch {epoch}"), "pruned", None)

    def mark_diverged(self, epoch: int, reason: str) -> None:
        """Stop the trial as diverged at ``epoch`` (detected by a trainer): raises ``TrialDiverged``.

        Args:
            epoch: The epoch that diverged.
            reason: What diverged, for the message.
        """
        self._stop_as(TrialDiverged(f"diverged at epoch {epoch}: {reason}"), "diverged", epoch)

    def result(self) -> tuple[float, dict[str, float]]:
        """The objective value and the final metrics on the split (stored names) of the run so far.

        Complete: the last report's. Diverged: the untrained model's (``report_initial``) when given,
        else the worst finite objective reported (other metrics left out), else ±inf. Pruned: the last
        report's (the caller scores a pruned trial itself).

        Raises:
            RuntimeError: nothing was reported (``fit`` never called ``trial.report``).
        """
        name = self.objective_name
        if self.state == "diverged":
            if self._initial is not None and math.isfinite(self._initial.get(name, math.nan)):
                return self._initial[name], dict(self._initial)
            reported = [m[name] for _, m in self._history if math.isfinite(m.get(name, math.nan))]
            worst = (max if self.direction == "minimize" else min)(reported, default=None)
            if worst is None:
                worst = math.inf if self.direction == "minimize" else -math.inf
            return worst, {name: worst}
        if not self._history:
            raise RuntimeError(
                f"fit() returned without reporting any epoch: call trial.report({self.objective}=...) once per epoch, "
                "in the loop over trial.epochs()"
            )
        last = self._history[-1][1]
        prefix = f"{self.split}_"
        return last[name], {k: v for k, v in last.items() if k.startswith(prefix)}

    def curves(self) -> Curves:
        """The reported epochs as ``adamtune.core.curves.Curves``."""
        from adamtune.core.curves import Curves, EpochMetrics

        curves = Curves(epochs=[EpochMetrics(epoch, dict(m)) for epoch, m in self._history])
        curves.diverged_epoch = self.diverged_epoch
        if self._initial is not None:
            curves.initial = {f"val_{bare_name(k)}": v for k, v in self._initial.items()}
        return curves

    # ---- internals -------------------------------------------------------------------------------------

    def _split_metrics(self, metrics: Mapping[str, Any], where: str) -> dict[str, float]:
        if not metrics:
            raise ContractError(f"{where}() needs metrics, e.g. {where}({self.objective}=...)")
        if self.objective not in metrics:
            got = ", ".join(f"{name}=..." for name in metrics)
            raise ContractError(
                f"{where}({got}) must include the objective {self.objective!r} (stored as "
                f"{self.objective_name}): report it every epoch, e.g. {where}({self.objective}=..., {got})"
            )
        stored = {}
        for name, value in metrics.items():
            check_metric_name(name, where)
            stored[f"{self.split}_{name}"] = _to_float(value, name)
        return stored

    def _report(self, epoch: int | None, metrics: Mapping[str, Any]) -> None:
        if self._stop is not None:
            raise self._stop
        stored = self._split_metrics(metrics, "trial.report")
        if epoch is None:
            epoch = self._current if self._current is not None else self._last_epoch + 1
        if epoch <= self._last_epoch:
            raise ContractError(
                f"trial.report was called twice for epoch {epoch}: report once per epoch, with every metric in one call"
            )
        record = {**self._pending_log, **stored}
        self._pending_log = {}
        self._history.append((epoch, record))
        self._last_epoch = epoch
        reason = self._divergence(record)
        if reason is not None:
            if self._on_epoch is not None:
                self._on_epoch(epoch, record, True)
            self.mark_diverged(epoch, reason)
        if self._on_epoch is not None and self._on_epoch(epoch, record, False):
            self._stop_as(TrialPruned(f"pruned at epoch {epoch}"), "pruned", None)

    def _divergence(self, record: Mapping[str, float]) -> str | None:
        for name, value in record.items():
            if not math.isfinite(value):
                return f"{name} is {value}"
        loss_name = f"{self.split}_loss"
        loss, reference = record.get(loss_name), self._reference_loss()
        if loss is not None and reference is not None and loss > DIVERGENCE_FACTOR * reference:
            return f"{loss_name} {loss:.4g} is over {DIVERGENCE_FACTOR:g}x the reference {reference:.4g}"
        return None

    def _reference_loss(self) -> float | None:
        source = self._initial if self._initial is not None else (self._history[0][1] if self._history else None)
        value = source.get(f"{self.split}_loss") if source is not None else None
        return value if value is not None and math.isfinite(value) and value > 0 else None

    def _stop_as(self, stop: StopTrial, state: str, epoch: int | None) -> None:
        self._stop, self.state = stop, state
        if epoch is not None:
            self.diverged_epoch = epoch
        raise stop


def _to_float(value: Any, name: str) -> float:
    try:
        if hasattr(value, "item"):  # tensors and numpy scalars (one element)
            value = value.item()
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"metric {name!r} must be a number or a one-element tensor, got {type(value).__name__}"
        ) from None
