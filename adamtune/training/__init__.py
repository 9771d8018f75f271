"""Training with one set of Adam settings: the optimizer factory (decay, warmup, parameter groups), the
built-in trainer and its batched K-model variant, :class:`~adamtune.training.context.TrialContext` (the
one seam between adamtune and training code), checkpoints, devices, the Lightning glue, and where a trial
trains (in the worker's process, or in a trainer process: client, server and their protocol).

May import: ``core``, ``data``, ``tasks``. Never MLflow or the study database; of Optuna only its artifact
stores (checkpoint blobs). Reporting and pruning reach the context as callables.
"""
