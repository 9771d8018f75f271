"""Validation folds of the confirmation stage: fresh, seeded splits of a task's training + validation data.

Why. A finalist is chosen because it scored best on the task's validation rows; confirming it on the
same rows re-uses the data that selected it (selection bias: Cawley & Talbot 2010, "On over-fitting in
model selection"). With a small validation split, a setting that fits those particular rows is then
confirmed with a tight interval and still generalises worse. So each confirmation seed trains and scores
every arm on a **fresh split** of the pooled training + validation data, drawn from that seed: the
finalists and the defaults of one seed see the same split (the comparison stays paired), and the spread
of the gain over seeds now includes the variance of which rows validate, not only of the seed. The test
split never enters a fold: it stays held out for ``verify``.

:class:`Fold` is what a confirmation run carries (``trial.fold`` in a loop task): its position among the
stage's seeds, how many there may be, and the seed that draws it. :meth:`Fold.split` (or
:func:`split_indices`) draws the split of ``n`` pooled rows the way adamtune splits its built-in tasks:
the validation part has the size of the task's own validation split, stratified by label when labels are
given (every class keeps its share, by largest remainder), and both parts are sorted indices.

The draw uses NumPy's ``RandomState`` (its stream is frozen across NumPy versions), so workers on other
hosts draw the same split for the same seed. Nothing here imports torch, optuna or mlflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fold:
    """One confirmation seed's fresh split of the pooled training + validation data.

    A confirmation run of a task declared ``LoopTask(folds=True)`` gets one as ``trial.fold``; adamtune
    creates it.

    Attributes:
        index: Position of this fold among the stage's seeds (0-based).
        count: How many folds the stage may draw (its ``--confirm-seeds``).
        seed: The seed that draws the split (the confirmation run's seed).

    Example:
        ```python
        pool = train_rows + val_rows
        if trial.fold is not None:  # a confirmation run: a fresh split of the pooled rows
            train_idx, val_idx = trial.fold.split(len(pool), val_size=len(val_rows), labels=pool_labels)
        ```
    """

    index: int
    count: int
    seed: int

    def split(
        self, n: int, *, val_size: int | float | None = None, labels: Sequence[Any] | Any = None
    ) -> tuple[list[int], list[int]]:
        """Split ``n`` pooled rows (training first, then validation) into this fold's training and validation.

        Args:
            n: The number of pooled rows (``len(train) + len(val)``).
            val_size: Rows to validate on (an int), or a fraction of ``n`` (a float in (0, 1)); default the
                built-in tasks' rule, ``validation_size``. Pass your own validation split's length to
                keep its size.
            labels: The ``n`` pooled class labels, to stratify (classification); None for a plain split.

        Returns:
            ``(train_indices, val_indices)``: sorted row indices into the pooled data, disjoint, covering all.

        Raises:
            ValueError: ``val_size`` leaves no row for one side, or ``labels`` has not ``n`` entries.
        """
        return split_indices(n, _resolve_size(n, val_size), self.seed, labels)

    def as_dict(self) -> dict[str, int]:
        """The fold as plain data: ``{"index", "count", "seed"}`` (what ``from_dict`` reads)."""
        return {"index": self.index, "count": self.count, "seed": self.seed}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Fold:
        """The fold that ``as_dict`` wrote.

        Args:
            values: A mapping with ``index``, ``count`` and ``seed``.
        """
        return cls(int(values["index"]), int(values["count"]), int(values["seed"]))


VAL_FRACTION = 0.1
VAL_MAX = 5000


def validation_size(n_train: int, fraction: float = VAL_FRACTION, max_size: int = VAL_MAX) -> int:
    """How many of ``n_train`` samples become validation: ``round(fraction * n)`` capped at ``max_size``.

    At least one sample goes to each side when ``n_train >= 2``; 0 when ``n_train < 2``. For the full
    datasets: CIFAR-10 50,000 -> 5,000; MNIST 60,000 -> 5,000; IMDB 25,000 -> 2,500.

    Args:
        n_train: The number of samples to split.
        fraction: The share that validates.
        max_size: The most samples that validate.
    """
    if n_train < 2:
        return 0
    return min(max(1, round(fraction * n_train)), max_size, n_train - 1)


def _resolve_size(n: int, val_size: int | float | None) -> int:
    if val_size is None:
        return validation_size(n)
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"a fractional val_size must lie in (0, 1), got {val_size}")
        return max(1, round(val_size * n))
    return int(val_size)


def split_indices(n: int, val_size: int, seed: int, labels: Sequence[Any] | Any = None) -> tuple[list[int], list[int]]:
    """Draw ``val_size`` of ``n`` rows for validation with ``seed``, stratified by ``labels`` when given.

    Stratified: each class gets ``val_size * count / n`` validation rows, rounded down, and the rows left
    over go to the classes with the largest remainders (ties: the smaller label first), so a class's share
    is kept to within one row; within each class the rows are a seeded random choice.

    Args:
        n: The number of rows.
        val_size: Rows to validate on, 1 to ``n - 1``.
        seed: The seed of the draw (NumPy's ``RandomState``, the same on every host).
        labels: ``n`` class labels to stratify by; None for a plain split.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        ValueError: ``val_size`` not in ``1..n-1``, or ``labels`` of another length than ``n``.
    """
    import numpy as np

    if not 1 <= val_size <= n - 1:
        raise ValueError(f"a fold needs 1 to {n - 1} validation rows out of {n}, got {val_size}")
    rng = np.random.RandomState(seed % 2**32)
    if labels is None:
        chosen = rng.permutation(n)[:val_size]
    else:
        values = np.asarray(labels)
        if values.ndim != 1 or len(values) != n:
            raise ValueError(f"labels must be {n} class labels (one per pooled row), got shape {values.shape}")
        classes, inverse = np.unique(values, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        quotas = val_size * counts / n
        taken = np.floor(quotas).astype(int)
        leftover = val_size - int(taken.sum())
        by_remainder = sorted(range(len(classes)), key=lambda c: (-(quotas[c] - taken[c]), c))
        for c in by_remainder[:leftover]:
            taken[c] += 1
        chosen = np.concatenate(
            [rng.permutation(np.flatnonzero(inverse == c))[: taken[c]] for c in range(len(classes))]
        )
    is_val = np.zeros(n, dtype=bool)
    is_val[chosen] = True
    return np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist()
