"""A SQLite file that is not a study database gets one line naming the file from every command, and is
left byte for byte as it was (no WAL switch, no Optuna tables added, no -wal/-shm files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from adamtune.cli.main import cli


def _not_a_database(path: Path) -> None:
    path.write_text("these are my notes, not a database\n")


def _corrupt(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE studies (x)")
        connection.executemany("INSERT INTO studies VALUES (?)", [(i,) for i in range(3000)])
    data = bytearray(path.read_bytes())
    data[16:100] = b"\xff" * 84  # a valid magic header over a broken database header
    path.write_bytes(bytes(data))


def _someone_elses(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
        connection.execute("INSERT INTO invoices VALUES (1, 9.5)")


FILES = {
    "not-sqlite": (_not_a_database, "is not a SQLite database"),
    "corrupt": (_corrupt, "is corrupt"),
    "foreign": (_someone_elses, "a SQLite database of something else"),
}
COMMANDS = {
    "search": ["search", "--task", "synthetic", "--n-trials", "1", "--epochs", "1", "--no-tracking"],
    "summary": ["summary"],
    "studies": ["studies"],
    "recommend": ["recommend"],
    "verify": ["verify", "--no-tracking"],
    "report": ["report", "--out", "report-out"],
    "worker": ["worker", "--study", "synthetic", "--no-tracking"],
}


@pytest.mark.parametrize("kind", list(FILES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_sqlite_file_is_named_and_left_untouched(workdir: Path, kind: str, command: str) -> None:
    make, fragment = FILES[kind]
    database = workdir / "study.db"
    make(database)
    before = database.read_bytes()
    result = CliRunner().invoke(cli, [*COMMANDS[command], "--storage", f"sqlite:///{database}"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0] and str(database) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert database.read_bytes() == before
    assert sorted(p.name for p in workdir.iterdir()) == ["study.db"]
