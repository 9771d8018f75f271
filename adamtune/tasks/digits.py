"""``digits``: scikit-learn's bundled 8×8 handwritten digits (real data, works offline) with an MLP.

1,797 images of 10 classes ship inside scikit-learn, so this task needs no download. The split is a
stratified, seeded shuffle: 60% train, 20% validation, 20% test (held out), stored as indices in
``digits_split.json``. Pixels (0..16) are scaled to [0, 1].
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from adamtune.core.errors import DataError
from adamtune.tasks.base import Split, Task, TaskData

SPLIT_SEED = 0
SPLIT_FILE = "digits_split.json"


def sklearn_data_file(name: str) -> Path:
    """A data file bundled with scikit-learn (``sklearn/datasets/data/NAME``), found without importing it.

    Importing ``sklearn.datasets`` costs 1-3 s of start-up in every worker; the file is read directly.

    Raises:
        DataError: scikit-learn is not installed or does not ship the file.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / name
        if path.is_file():
            return path
    raise DataError(f"scikit-learn's bundled {name} was not found; pip install scikit-learn")


def load_data(data_dir: Path | None = None) -> TaskData:
    """Load the digits bundled with scikit-learn (``data_dir`` is unused: nothing is downloaded).

    The split is stored in ``digits_split.json`` beside this module: the indices that scikit-learn's
    ``train_test_split`` gives (stratified, seed :data:`SPLIT_SEED`; a test checks they still agree), so
    loading needs neither scikit-learn's import nor its splitter.
    """
    import numpy

    table = numpy.loadtxt(sklearn_data_file("digits.csv.gz"), delimiter=",", dtype=numpy.float32)
    x = torch.from_numpy(table[:, :-1]) / 16.0
    y = torch.from_numpy(table[:, -1]).long()
    split = json.loads(resources.files("adamtune.tasks").joinpath(SPLIT_FILE).read_text())
    pick = lambda name: Split(x[split[name]], y[split[name]])  # noqa: E731
    return TaskData(train=pick("train"), val=pick("val"), test=pick("test"))


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def make_task() -> Task:
    return Task(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits with a two-hidden-layer MLP (offline, real data)",
        load_data=load_data,
        make_model=make_model,
        default_epochs=20,
        default_batch_size=32,
        dataset="sklearn digits: 1,077 train / 360 val / 360 test, 8x8 grey, 10 classes",
        model="MLP 64-256-256-10 (ReLU)",
        extra={"data": "bundled with scikit-learn; nothing to download"},
    )
