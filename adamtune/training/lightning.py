"""PyTorch Lightning integration: a ``fit(trial)`` that trains a ``LightningModule`` with a ``Trainer``.

Install with ``pip install "adamtune[lightning]"``. A Lightning user adds three things to a loop task::

    from adamtune.training.lightning import AdamtuneCallback, configure_optimizers, trainer_options

    class Model(lightning.LightningModule):
        def __init__(self, trial): ...; self.trial = trial
        def validation_step(self, batch, batch_idx): ...; self.log("val_mae", mae)   # as usual
        def configure_optimizers(self):
            return configure_optimizers(self.trial, self)        # the trial's Adam + per-step schedule

    def fit(trial):
        trainer = lightning.Trainer(**trainer_options(trial), callbacks=[AdamtuneCallback(trial)])
        trainer.fit(Model(trial), train_loader, loader_of(trial.split))   # validate on trial.split

* :class:`AdamtuneCallback` reports, after every validation run of ``trainer.fit``, the metrics the
  module logged with the ``val_`` prefix (``val_mae`` -> ``mae``; ``val/mae`` works too) to the trial,
  which stores them on ``trial.split`` (``val_mae`` in the search, ``test_mae`` in verify, where the
  "validation" loader you pass is the test split's). The monitored metric, the trial's objective,
  must be among them. When the trial is pruned or diverges the callback sets ``trainer.should_stop``
  (Lightning ends the run after the epoch) and the trial ends pruned or diverged.
* :func:`configure_optimizers` returns the trial's optimizer with its learning-rate schedule stepped
  after every optimizer step (``interval="step"``), as adamtune's decay is defined per update.
* :func:`trainer_options` maps the trial to ``Trainer`` arguments: ``max_epochs=trial.n_epochs``, the
  trial's device, and no logger, checkpointing, progress bar or model summary (adamtune records the
  run in MLflow; pass your own values after ``**`` to override); it also quiets Lightning's info lines
  (accelerators found, tips), which would otherwise repeat for every trial.

The epoch of a report is ``trainer.current_epoch + 1``; the sanity-check validation before training is
not reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.trainer.states import TrainerFn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "adamtune.lightning needs PyTorch Lightning: pip install 'adamtune[lightning]' (or pip install lightning)"
    ) from exc

from adamtune.training.context import TrialContext
from adamtune.training.stops import StopTrial

#: Prefixes of the metrics a LightningModule logs in its validation loop.
VALIDATION_PREFIXES = ("val_", "val/")


class AdamtuneCallback(pl.Callback):
    """Reports a ``Trainer``'s validation metrics to ``trial`` each validation run; stops stopped trials.

    Args:
        trial: The trial context ``fit`` received.
        monitor: The logged metric that is the trial's objective (default ``val_<objective>``); it must
            be logged in every validation run. Other ``val_``-prefixed logged metrics are reported too.

    Example:
        ```python
        trainer = lightning.Trainer(**trainer_options(trial), callbacks=[AdamtuneCallback(trial)])
        ```
    """

    def __init__(self, trial: TrialContext, monitor: str | None = None) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor or f"val_{trial.objective}"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the validation run's metrics as the epoch's (Lightning calls this; not the sanity check).

        Args:
            trainer: The ``Trainer`` running ``fit``; its ``should_stop`` is set once the trial stopped.
            pl_module: The module being trained (unused).

        Raises:
            ValueError: The monitored metric was not logged in validation.
        """
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:  # not trainer.validate()
            return
        if self.trial.stopped:
            trainer.should_stop = True
            return
        metrics = validation_metrics(trainer.callback_metrics)
        if self.monitor not in trainer.callback_metrics:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise ValueError(
                f"AdamtuneCallback: the monitored metric {self.monitor!r} was not logged in validation "
                f"(logged: {logged}); self.log({self.monitor!r}, ...) in validation_step"
            )
        metrics[self.trial.objective] = trainer.callback_metrics[self.monitor]
        try:
            self.trial.report_epoch(trainer.current_epoch + 1, metrics)
        except StopTrial:
            trainer.should_stop = True  # the trial is pruned or diverged; Lightning stops after this epoch


def validation_metrics(logged: Mapping[str, Any]) -> dict[str, Any]:
    """The ``val_``/``val/``-prefixed entries of ``logged``, by bare name (``val_mae`` -> ``mae``).

    Args:
        logged: What the module logged (``trainer.callback_metrics``).
    """
    metrics = {}
    for name, value in logged.items():
        for prefix in VALIDATION_PREFIXES:
            if name.startswith(prefix) and name[len(prefix) :].isidentifier():
                metrics[name[len(prefix) :]] = value
    return metrics


def configure_optimizers(trial: TrialContext, model_or_parameters: Any) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns for the trial's Adam settings.

    The schedule is stepped every optimizer step (``interval="step"``), as adamtune's decay is defined.

    Args:
        trial: The trial context ``fit`` received.
        model_or_parameters: The ``LightningModule`` (``self``) or its parameters.

    Returns:
        ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": "step", "frequency": 1}}``.

    Example:
        ```python
        def configure_optimizers(self):
            return adamtune.configure_optimizers(self.trial, self)
        ```
    """
    optimizer, scheduler = trial.make_optimizer(model_or_parameters)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def quiet_lightning() -> None:
    """Silence what Lightning prints for every ``Trainer`` (available accelerators, tips, "fit stopped").

    In a search those lines would repeat for every trial. Its warnings stay.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def trainer_options(trial: TrialContext) -> dict[str, Any]:
    """``Trainer`` keyword arguments for ``trial``: its epochs and device, and nothing adamtune records itself.

    No logger, checkpointing, progress bar or model summary (adamtune records the run in MLflow); pass your
    own values after ``**`` to override. Also quiets Lightning's per-run info lines (``quiet_lightning``).

    Args:
        trial: The trial context ``fit`` received.

    Returns:
        ``max_epochs``, ``accelerator`` and ``devices`` for the trial's device, and the switches above.
    """
    quiet_lightning()
    device = str(trial.device)
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        placement: dict[str, Any] = {"accelerator": "gpu", "devices": [index]}
    elif device == "mps":
        placement = {"accelerator": "mps", "devices": 1}
    else:
        placement = {"accelerator": "cpu", "devices": 1}
    return {
        "max_epochs": trial.n_epochs,
        **placement,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
