"""Packaging: the wheel carries the study files, so built-in tasks work without the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("adamtune-*.whl")
    return path


def test_wheel_contains_package_study_files_and_entry_point(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("adamtune/studies/")}
    assert {f.name for f in (ROOT / "studies").glob("*.toml")} <= shipped
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "adamtune = adamtune.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_copy_finds_its_study_files_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from adamtune.core.config import build_spec; s = build_spec('digits'); print(s.source); print(s.epochs)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    source, epochs = result.stdout.split()
    assert source.startswith(str(site)) and epochs == "20"
