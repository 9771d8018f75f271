"""adamtune: hyperparameter tuning for the Adam optimizer, on Optuna and MLflow.

Importing this package is cheap: it imports neither torch, optuna nor mlflow. The public API is loaded on
first use: ``adamtune.search(...)`` and ``adamtune.load(...)`` run and read studies (a
:class:`~adamtune.api.SearchResult`), and these tune your own training loop::

    import adamtune

    def fit(trial: adamtune.TrialContext) -> None: ...

    task = adamtune.LoopTask(name="mine", fit=fit, objective="mae", direction="minimize")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AdamtuneCallback",
    "Fold",
    "LoopTask",
    "SearchResult",
    "StopTrial",
    "Task",
    "TrialContext",
    "TrialDiverged",
    "TrialPruned",
    "__version__",
    "configure_optimizers",
    "load",
    "search",
    "trainer_options",
]

#: Public name -> the module that defines it (imported on first access, see ``__getattr__``).
_LAZY = {
    "TrialContext": "adamtune.training.context",
    "StopTrial": "adamtune.training.stops",
    "TrialPruned": "adamtune.training.stops",
    "TrialDiverged": "adamtune.training.stops",
    "LoopTask": "adamtune.tasks.loop",
    "Task": "adamtune.tasks.base",
    "Fold": "adamtune.core.folds",
    "search": "adamtune.api",
    "load": "adamtune.api",
    "SearchResult": "adamtune.api",
    "AdamtuneCallback": "adamtune.training.lightning",
    "configure_optimizers": "adamtune.training.lightning",
    "trainer_options": "adamtune.training.lightning",
}

if TYPE_CHECKING:
    from adamtune.api import SearchResult, load, search
    from adamtune.core.folds import Fold
    from adamtune.tasks.base import Task
    from adamtune.tasks.loop import LoopTask
    from adamtune.training.context import TrialContext
    from adamtune.training.lightning import AdamtuneCallback, configure_optimizers, trainer_options
    from adamtune.training.stops import StopTrial, TrialDiverged, TrialPruned


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adamtune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
