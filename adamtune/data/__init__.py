"""Dataset bytes on disk: downloads with checksums and locks, safe archive extraction and unpickling, and
the formats of the Adam paper's datasets (CIFAR-10, MNIST, IMDB).

May import: ``core``. Never Optuna, MLflow or the study database.
"""
