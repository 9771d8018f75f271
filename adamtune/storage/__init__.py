"""The Optuna boundary: opening storages, samplers and pruners by name, creating and resuming studies,
trial counts and attribute keys, heartbeats and stale trials, admission, and what a running trial writes
to the study database.

May import: ``core``, ``data``, ``tasks``, ``training``. Never MLflow.
"""
