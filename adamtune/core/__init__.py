"""The pure core: errors (with exit codes), configuration and the study file, the Adam search space,
metric names and directions, learning curves as data, validation folds, signals, and the confirmation
stage's decision rule with its statistics.

May import: nothing of adamtune outside ``core``; of third-party code only NumPy (folds, lazily). Never
torch, Optuna, MLflow, SQLAlchemy, click or Rich (import-linter contract in ``pyproject.toml``).
"""
