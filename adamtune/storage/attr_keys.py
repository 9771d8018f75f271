"""The keys of the user attributes adamtune stores on Optuna studies and trials.

Study attributes: ``SPEC_ATTR`` (the study's definition) and ``SETTINGS_ATTR`` (the latest run settings).
Everything else is a trial attribute. Only constants live here, so any layer that reads a study can name
them without importing the code that writes them.
"""

from __future__ import annotations

SPEC_ATTR = "adamtune.spec"
SETTINGS_ATTR = "adamtune.settings"
STATE_ATTR = "adamtune.state"
BASELINE_ATTR = "adamtune.baseline"
SEED_ATTR = "adamtune.seed"
PARAMS_ATTR = "adamtune.params"
CURVES_ATTR = "adamtune.curves"
RUN_ID_ATTR = "mlflow.run_id"
DIVERGED_EPOCH_ATTR = "adamtune.diverged_epoch"
DEVICE_ATTR = "adamtune.device"
HOST_ATTR = "adamtune.host"
WORKER_ATTR = "adamtune.worker"
#: Marks a confirmation run (``confirm.ARM_ATTR``): never re-queued, the stage plans it again.
CONFIRM_ARM_ATTR = "adamtune.confirm.arm"
#: A warm-started trial (``launch/warm_start.py``): ``{"params": AdamParams.as_dict(), "origin": "..."}``; it
#: trains with exactly these settings, whatever dimensions the space searches.
WARM_ATTR = "adamtune.warm_start"
#: The dimensions a trial's space searched (an auto space grows with the budget); the rest were at the defaults.
SEARCHED_ATTR = "adamtune.searched"
#: A repeat of the baseline on another seed: measures the seed noise for the stop rule (``--stop-when-converged``).
NOISE_PROBE_ATTR = "adamtune.noise_probe"
