"""``LoopTask``: a task whose training loop is the user's own ``fit(trial)`` function.

adamtune owns the trial (the sampled Adam settings, the seed, the device, pruning, divergence, MLflow,
the study); the user owns everything inside ``fit``: the model, the data and its DataLoaders, the loss,
the batches and the evaluation. The two meet in :class:`adamtune.TrialContext`::

    def fit(trial: adamtune.TrialContext) -> None:
        model = Net().to(trial.device)                      # trial.seed is already applied to torch
        optimizer, scheduler = trial.make_optimizer(model.parameters())
        for epoch in trial.epochs():                        # 1..E
            ...                                             # scheduler.step() after every optimizer.step()
            trial.report(loss=eval_loss, mae=eval_mae)      # metrics on trial.split; may stop the trial

    task = adamtune.LoopTask(name="diabetes", fit=fit, objective="mae", direction="minimize")

Contract
--------
* ``fit(trial)`` trains one model with ``trial.params`` for ``trial.epochs()`` and calls
  ``trial.report(...)`` once per epoch with metrics measured on ``trial.split`` (``"val"`` during the
  search and confirmation, ``"test"`` during ``adamtune verify``). Each report must include the
  objective. ``fit`` returns nothing; what it reported is the result. It is called once per trial, in
  the process that trains the worker's runs (its trainer process, see ``trainer.py``), many times per
  process: keep state in the function, not in globals.
* ``data(data_dir)`` (optional) is called **once per training process**; its result is ``trial.data`` in
  every trial of that worker (load files, build datasets there, not in ``fit``). Without it,
  ``trial.data`` is None.
* ``folds=True`` declares that ``fit`` honours ``trial.fold``: when it is not None (confirmation runs),
  ``fit`` pools its training and validation rows and trains and validates on
  ``trial.fold.split(len(pool), val_size=len(val), labels=...)`` (see :class:`adamtune.core.folds.Fold`),
  so the finalists are confirmed on rows that did not select them. A task that leaves it False is
  confirmed on its own validation rows with fresh seeds only, and ``summary`` says "validation rows
  fixed: the gain may not transfer". ``trial.fold`` is None in search trials and in ``verify``.
* ``objective`` is the bare name of the reported metric the study optimises (``"mae"`` is stored as
  ``val_mae``); ``direction`` is its direction. ``metrics`` names further reported metrics that
  ``--objective`` may choose; ``directions`` gives their directions where
  :data:`adamtune.core.metrics.KNOWN_DIRECTIONS` does not know them.

This module imports neither torch, optuna nor mlflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamtune.core.metrics import check_direction, check_metric_name, direction_of

if TYPE_CHECKING:
    from adamtune.training.context import TrialContext


@dataclass(frozen=True)
class LoopData:
    """What a ``LoopTask``'s ``data`` function returned, held by the worker for every trial.

    ``to(device)`` returns it unchanged: the user's ``fit`` moves its own batches to ``trial.device``.
    """

    value: Any = None

    def to(self, device: object) -> LoopData:
        """This data, unchanged (``fit`` moves its own batches).

        Args:
            device: The worker's device (unused).
        """
        return self

    def sizes(self) -> dict[str, int]:
        """No sizes: adamtune does not know the user's data."""
        return {}


@dataclass(frozen=True)
class LoopTask:
    """A task trained by the user's ``fit(trial)``: your own training loop, tuned by adamtune.

    See the module docstring for the contract; pass it to [adamtune.search][adamtune.api.search] as ``"module:name"``.

    Args:
        name: The task's name (the default study name).
        fit: ``fit(trial)``: trains one model with ``trial.params`` and calls ``trial.report(...)`` once per
            epoch (see [TrialContext][adamtune.training.context.TrialContext]).
        objective: The bare name of the reported metric the study optimises (``"mae"`` is stored as
            ``val_mae``).
        direction: The objective's direction, ``"minimize"`` or ``"maximize"``.
        default_epochs: Epochs per trial unless the study says otherwise (``trial.n_epochs``).
        default_batch_size: The batch size unless the study says otherwise (``trial.batch_size``).
        metrics: Further reported metrics that ``--objective`` may choose.
        directions: Directions of further metrics whose names adamtune does not know.
        data: ``data(data_dir)``, called once per training process; its result is ``trial.data``.
        description: One line for listings.
        dataset: The dataset, in words.
        model: The model, in words.
        extra: Further notes, by name.
        folds: ``fit`` honours ``trial.fold`` (confirmation runs on fresh splits of the pooled rows).

    Raises:
        ValueError: A missing name, a ``fit`` or ``data`` that is not callable, bad defaults, metric names
            or directions.

    Example:
        ```python
        import adamtune

        def fit(trial: adamtune.TrialContext) -> None:
            model = Net().to(trial.device)
            optimizer, scheduler = trial.make_optimizer(model)
            for epoch in trial.epochs():
                ...  # train; scheduler.step() after every optimizer.step()
                trial.report(loss=val_loss, mae=val_mae)

        task = adamtune.LoopTask(name="mine", fit=fit, objective="mae", direction="minimize")
        ```
    """

    name: str
    fit: Callable[[TrialContext], None]
    objective: str = "loss"
    direction: str = "minimize"
    default_epochs: int = 10
    default_batch_size: int = 32
    metrics: tuple[str, ...] = ()
    directions: Mapping[str, str] = field(default_factory=dict)
    data: Callable[[Path], Any] | None = None
    description: str = ""
    dataset: str = ""
    model: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    folds: bool = False

    def __post_init__(self) -> None:
        where = f"LoopTask {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("LoopTask needs a name")
        if not callable(self.fit):
            raise ValueError(f"{where}: fit must be a function fit(trial), got {type(self.fit).__name__}")
        for value, what in ((self.default_epochs, "default_epochs"), (self.default_batch_size, "default_batch_size")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {what} must be a whole number >= 1, got {value!r}")
        check_metric_name(self.objective, f"{where} (objective)")
        check_direction(self.direction, where)
        if isinstance(self.metrics, str):
            raise ValueError(f"{where}: metrics must be a tuple of names, got the string {self.metrics!r}")
        for name in self.metrics:
            check_metric_name(name, where)
        for direction in self.directions.values():
            check_direction(direction, where)
        if not isinstance(self.folds, bool):
            raise ValueError(f"{where}: folds must be True or False, got {self.folds!r}")
        if self.data is not None and not callable(self.data):
            raise ValueError(f"{where}: data must be a function data(data_dir), got {type(self.data).__name__}")

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Bare names a study may optimise: the objective first, then ``metrics``."""
        return tuple(dict.fromkeys((self.objective, *self.metrics)))

    def direction_of(self, metric: str) -> str | None:
        """The direction of bare ``metric`` (None: unknown).

        Args:
            metric: A bare metric name, e.g. ``mae``.
        """
        return direction_of(metric, self.objective, self.direction, self.directions)

    def load_data(self, data_dir: Path) -> LoopData:
        """Call the task's ``data`` function once (per worker process); its result becomes ``trial.data``.

        Args:
            data_dir: The dataset cache directory, passed to ``data``.
        """
        return LoopData(self.data(data_dir) if self.data is not None else None)
