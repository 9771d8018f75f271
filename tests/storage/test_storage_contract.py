"""adamtune's study storage keeps Optuna's storage contract: Optuna's own test suite for storages
(``optuna.testing.pytest_storages.StorageTestCase``, 59 tests), run against it bare and wrapped the way
Optuna wraps an RDB storage for a study (``optuna.storages.get_storage``: its cache in front).

Real parts: SQLite files and this machine's PostgreSQL (a fresh database per test). Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase

from adamtune.storage.backends import open_storage


@pytest.fixture(params=["sqlite-bare", "sqlite-wrapped", "postgres-wrapped"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BaseStorage:
    database, wrapping = request.param.split("-")
    if database == "sqlite":
        url = f"sqlite:///{tmp_path}/contract.db"
    else:
        new_postgres_url: Callable[[], str] = request.getfixturevalue("new_postgres_url")
        url = new_postgres_url()
    opened = open_storage(url)
    return opened if wrapping == "bare" else optuna.storages.get_storage(opened)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
class TestStudyStorageKeepsOptunasContract(StorageTestCase):
    """Every test of Optuna's storage contract, on :class:`adamtune.storage.rdb.StudyStorage`."""
