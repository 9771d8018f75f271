"""adamtune: hyperparameter tuning for the Adam optimizer, on Optuna and MLflow.

Importing this package is cheap: it imports neither torch, optuna nor mlflow.
"""

__version__ = "0.1.0"
