"""``imdb-bow``: IMDB movie-review sentiment with logistic regression on bag-of-words (Adam paper, 6.1).

Features are binary presence of the 10,000 most frequent words of the training reviews (lower-cased,
``<br />`` removed, regex word tokens). They are kept in a compact padded-index form (N x L int16, L the
most distinct vocabulary words in one review) and turned into dense 0/1 vectors per batch in
``prepare``, so the full dataset costs tens of MB instead of 25,000 x 10,000 floats. The model applies
50% dropout to its input, as in the paper. Validation: 2,500 training reviews picked with a fixed seed
(10% for smaller copies); the 25,000 test reviews are held out.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adamtune.data.datasets import IMDB, IMDB_FOLDER, densify, imdb_cache_path, load_imdb_bow
from adamtune.tasks.base import Task, TaskData
from adamtune.tasks.common import split_train_val

VOCAB_SIZE = 10_000


def load_data(data_dir: Path) -> TaskData:
    """IMDB bag-of-words from ``data_dir`` (downloaded and featurised on first use, then cached)."""
    bow = load_imdb_bow(data_dir, VOCAB_SIZE)
    return split_train_val(bow.train_x, bow.train_y, bow.test_x, bow.test_y)


def prepare(x: torch.Tensor) -> torch.Tensor:
    """Padded word-index rows (pad value 10,000) -> dense (B, 10,000) float 0/1 bag-of-words."""
    return densify(x, VOCAB_SIZE)


def make_model(dropout: float = 0.5) -> nn.Module:
    """Logistic regression over the vocabulary with dropout on the input: Dropout(0.5) -> linear 10,000 -> 2."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(VOCAB_SIZE, 2))


def make_task() -> Task:
    """The ``imdb-bow`` task: 10 epochs of batch 128 (the paper's batch size)."""
    return Task(
        name="imdb-bow",
        description="IMDB reviews, binary bag-of-words of the 10,000 most frequent words, logistic regression",
        load_data=load_data,
        make_model=make_model,
        default_epochs=10,
        default_batch_size=128,
        prepare=prepare,
        dataset="IMDB (aclImdb v1): 22,500 train / 2,500 val (seeded) / 25,000 test reviews, 2 classes",
        model="logistic regression 10,000 -> 2 with 50% input dropout (20,002 params)",
        extra={
            "source": IMDB.url,
            "md5": IMDB.md5,
            "layout": f"<data-dir>/{IMDB_FOLDER}/{{train,test}}/{{pos,neg}}/*.txt or <data-dir>/{IMDB.filename}",
            "cache": f"<data-dir>/{imdb_cache_path(Path(), VOCAB_SIZE)} (features, built on first load)",
        },
    )
