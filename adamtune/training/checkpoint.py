"""Trial checkpoints: where they are kept, what they hold, how a retry finds its lineage's latest one.

A checkpoint is one blob in an Optuna artifact store (:class:`optuna.artifacts.FileSystemArtifactStore`
for a directory, the default, or :class:`optuna.artifacts.Boto3ArtifactStore` for ``s3://bucket/prefix``
when boto3 is installed). It holds the ``state_dict`` of every object the trial registered (the built-in
trainer registers its model, optimizer, scheduler and shuffling ``torch.Generator``), torch's CPU RNG
state (and every CUDA device's, when CUDA is present), Python's and numpy's RNG states, the epoch, the
untrained model's metrics and the curve so far, and a fingerprint of the trial's settings (params, seed,
epochs, batch size, task).

Keyed by lineage. A trial and its retries (``stale_trials.requeue_trial``: ``failed_trial`` in the retry's
system attributes is the original trial's number) share a lineage, and its checkpoints are the artifacts
``<study>.lineage-<original number>.a`` and ``….b``. Atomicity without a rename (object stores have
none): a save writes the slot the latest checkpoint is *not* in, and only then records the pointer
``{"artifact": id, "epoch": N}`` on the Optuna trial (user attribute :data:`CHECKPOINT_ATTR`), so a save
cut short is never pointed to. A retry reads the pointers of its lineage's trials and loads the one of
the highest epoch. Disk: at most two checkpoints per unfinished lineage; a lineage's slots are removed
when its trial ends (complete, pruned, diverged, or failed for a reason that is not retried). With
``keep_best_checkpoint``, a complete trial that no complete trial beats also writes its final state to
``<study>.best`` (one per study; :data:`BEST_ATTR` on the trial points to it).

Loading: anything that goes wrong (a truncated or corrupt blob, another model's state, other settings)
raises :class:`CheckpointUnusable`; the context reports it in one warning line and trains from epoch 1.

This module imports optuna's artifact stores and torch lazily; the trial context calls it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamtune.core.errors import ConfigError

#: Trial user attribute: the pointer to the trial's latest checkpoint, ``{"artifact": id, "epoch": N}``.
CHECKPOINT_ATTR = "adamtune.checkpoint"
#: Trial user attribute: where the study's best trial's final checkpoint is (``keep_best_checkpoint``).
BEST_ATTR = "adamtune.best_checkpoint"
#: Trial user attribute and MLflow tag: the epoch a resumed trial restarted after.
RESUMED_ATTR = "adamtune.resumed_from_epoch"
#: Environment variable (and ``--checkpoint-store``): where checkpoints go (a directory or ``s3://…``).
STORE_ENV = "ADAMTUNE_CHECKPOINT_STORE"
#: ``checkpoint_every`` unset: save every epoch when the first epoch says the trial takes this long, else never.
AUTO_SECONDS = 60.0
#: ``checkpoint_every`` unset: the longest share of training time saves may take (the interval widens).
AUTO_SHARE = 0.01
FORMAT = 1
SLOTS = ("a", "b")


class CheckpointUnusable(Exception):
    """A checkpoint exists but cannot be used (corrupt, another model, other settings)."""


def default_location(storage_url: str | None) -> str:
    """``<dir of the SQLite file>/<its stem>-checkpoints``; for a server database, ``./adamtune-checkpoints``.

    Workers on other machines must be given one shared location (``--checkpoint-store`` or
    :data:`STORE_ENV`): a local default is not seen by them.
    """
    if storage_url and storage_url.startswith("sqlite:///"):
        path = Path(storage_url[len("sqlite:///") :].split("?", 1)[0])
        if str(path) not in ("", ":memory:"):
            return str(path.resolve().parent / f"{path.stem}-checkpoints")
    return str(Path.cwd() / "adamtune-checkpoints")


def resolve_location(explicit: str | None, storage_url: str | None) -> str:
    """The checkpoint location: ``explicit``, else :data:`STORE_ENV`, else :func:`default_location`."""
    return explicit or os.environ.get(STORE_ENV, "").strip() or default_location(storage_url)


def open_store(location: str) -> tuple[Any, str]:
    """``(artifact store, id prefix)`` for ``location``: a directory (created) or ``s3://bucket[/prefix]``.

    A directory is created at the first save.

    Raises:
        ConfigError: ``s3://`` without boto3 installed, or a path that is a file.
    """
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        try:
            from optuna.artifacts import Boto3ArtifactStore

            return Boto3ArtifactStore(bucket), (prefix.strip("/") + "/" if prefix.strip("/") else "")
        except ImportError:
            raise ConfigError(f"checkpoint store {location} needs boto3: pip install boto3") from None
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"checkpoint store {location} is not a directory; pass a directory or s3://bucket/prefix")
    return _DirectoryStore(path), ""


class _DirectoryStore:
    """``FileSystemArtifactStore`` on a directory made at the first save (a search of tiny trials leaves none)."""

    def __init__(self, path: Path) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self.path = path
        self._store = FileSystemArtifactStore(path)

    def open_reader(self, artifact_id: str) -> Any:
        return self._store.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(artifact_id)


def lineage_of(number: int, system_attrs: Mapping[str, Any]) -> int:
    """The original trial number of a trial and its retries (``failed_trial`` of a retry, else its own)."""
    original = system_attrs.get("failed_trial")
    return int(original) if isinstance(original, int) else number


def lineage_numbers(number: int, system_attrs: Mapping[str, Any]) -> list[int]:
    """Every earlier trial of the lineage (oldest first): ``retry_history`` of a retry, else none."""
    history = system_attrs.get("retry_history") or []
    return [int(n) for n in history if isinstance(n, int) and n != number]


@dataclass
class TrialCheckpoints:
    """One lineage's checkpoints in ``store``: load the latest, save the next, remove them all.

    ``pointers`` are the :data:`CHECKPOINT_ATTR` values of the lineage's earlier trials; ``set_pointer``
    records the new pointer on the running trial (a database write, after the blob is written).
    ``fingerprint`` must match the checkpoint's, or it is from another trial.
    """

    store: Any
    prefix: str
    study_name: str
    lineage: int
    fingerprint: dict[str, Any]
    set_pointer: Callable[[dict[str, Any]], None]
    pointers: list[dict[str, Any]] = field(default_factory=list)
    every: int | None = None
    #: Where ``store`` is (``open_store``'s argument), for a trainer process that opens it itself.
    location: str | None = None
    _latest: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        valid = [p for p in self.pointers if isinstance(p, dict) and isinstance(p.get("epoch"), int)]
        self._latest = max(valid, key=lambda p: p["epoch"], default=None)

    def artifact_id(self, slot: str) -> str:
        study = re.sub(r"[^A-Za-z0-9._-]", "_", self.study_name)
        return f"{self.prefix}{study}.lineage-{self.lineage}.{slot}"

    @property
    def latest_epoch(self) -> int | None:
        """The epoch of the lineage's latest checkpoint, or None."""
        return self._latest["epoch"] if self._latest is not None else None

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint's contents, or None when the lineage has none.

        Raises:
            CheckpointUnusable: it cannot be read, or was written by a trial with other settings.
        """
        if self._latest is None:
            return None
        artifact = str(self._latest.get("artifact"))
        try:
            with self.store.open_reader(artifact) as reader:
                blob = reader.read()
            state = _deserialize(blob)
        except Exception as exc:
            raise CheckpointUnusable(f"checkpoint {artifact} cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointUnusable(f"checkpoint {artifact} is not an adamtune checkpoint")
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointUnusable(f"checkpoint {artifact} belongs to a trial with other settings")
        if state.get("epoch") != self._latest["epoch"]:
            raise CheckpointUnusable(f"checkpoint {artifact} holds epoch {state.get('epoch')}, not the recorded one")
        return state

    def save(self, epoch: int, state: dict[str, Any]) -> int:
        """Write ``state`` for ``epoch`` to the free slot, then point to it; returns the bytes written."""
        used = str(self._latest.get("artifact")) if self._latest is not None else None
        artifact = next(a for a in (self.artifact_id(s) for s in SLOTS) if a != used)
        blob = _serialize({**state, "format": FORMAT, "epoch": epoch, "fingerprint": self.fingerprint})
        self.store.write(artifact, io.BytesIO(blob))
        pointer = {"artifact": artifact, "epoch": epoch}
        self.set_pointer(pointer)
        self._latest = pointer
        return len(blob)

    def best_id(self) -> str:
        return f"{self.prefix}{re.sub(r'[^A-Za-z0-9._-]', '_', self.study_name)}.best"

    def save_best(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        """Write a finished trial's final ``state`` as the study's best checkpoint (one per study, replaced
        by each better trial); returns its pointer."""
        blob = _serialize({**state, "format": FORMAT, "epoch": epoch, "fingerprint": self.fingerprint})
        self.store.write(self.best_id(), io.BytesIO(blob))
        return {"artifact": self.best_id(), "epoch": epoch, "bytes": len(blob)}

    def remove_all(self) -> None:
        """Remove the lineage's checkpoints (missing ones are fine)."""
        for slot in SLOTS:
            with contextlib.suppress(Exception):  # ArtifactNotFound, or a store that cannot delete
                self.store.remove(self.artifact_id(slot))


# ---- what a checkpoint holds (torch) -----------------------------------------------------------------------


def capture(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The states of ``objects`` (``state_dict()``, or ``get_state()`` of a ``torch.Generator``) and of the
    global RNGs (torch CPU, every CUDA device when present, Python's ``random``, numpy)."""
    import random

    import numpy
    import torch

    states = {}
    for name, obj in objects.items():
        if isinstance(obj, torch.Generator):
            states[name] = {"generator": obj.get_state()}
        else:
            states[name] = {"state_dict": obj.state_dict()}
    kind, keys, pos, has_gauss, cached = numpy.random.get_state()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"objects": states, "rng": rng}


def restore(objects: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Load ``state["objects"]`` into ``objects``; all or nothing (states are put back when one fails).

    Raises:
        CheckpointUnusable: a registered object is missing from the checkpoint, or its state does not fit.
    """
    import copy

    saved = state.get("objects", {})
    missing = sorted(set(objects) - set(saved))
    if missing:
        raise CheckpointUnusable(f"the checkpoint has no state for {', '.join(missing)}")
    before = {name: copy.deepcopy(_state_of(obj)) for name, obj in objects.items()}
    try:
        for name, obj in objects.items():
            _load_into(obj, saved[name])
    except Exception as exc:
        for name, obj in objects.items():
            with contextlib.suppress(Exception):
                _load_into(obj, before[name])
        raise CheckpointUnusable(f"the checkpoint does not fit this trial's objects ({type(exc).__name__})") from None


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back the global RNG states saved by :func:`capture`."""
    import random

    import numpy
    import torch

    rng = state.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "random" in rng:
        random.setstate(_tuples(rng["random"]))
    if "numpy" in rng:
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _state_of(obj: Any) -> dict[str, Any]:
    import torch

    return {"generator": obj.get_state()} if isinstance(obj, torch.Generator) else {"state_dict": obj.state_dict()}


def _load_into(obj: Any, saved: Mapping[str, Any]) -> None:
    if "generator" in saved:
        obj.set_state(saved["generator"])
    else:
        obj.load_state_dict(saved["state_dict"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _serialize(state: Mapping[str, Any]) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def _deserialize(blob: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
