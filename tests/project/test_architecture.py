"""The package's shape holds: the layers import-linter enforces, the picture in docs/architecture.md,
small modules, and every subpackage saying what it owns.

Real parts: the source tree, ``pyproject.toml``, and ``lint-imports`` run as a user runs it.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "adamtune"
#: The house limit on a module's length ("~400 lines").
MAX_LINES = 400


def contract_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [name.removeprefix("adamtune.") for name in layers]


def test_the_architecture_picture_lists_the_layers_the_contract_enforces() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- layers:", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    pictured = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert pictured == contract_layers()
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert sorted(contract_layers()) == sorted(packages | modules)  # every part of the package is a layer


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)}: its docstring must say what it may import"


def test_no_module_is_over_the_house_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_import_linter_keeps_every_contract() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]'")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    kept = re.search(r"Contracts: (\d+) kept, (\d+) broken", done.stdout)
    assert kept is not None and int(kept.group(2)) == 0 and int(kept.group(1)) >= 5


#: The one adapter module per library where its non-public names may be used (each listed there).
ADAPTERS = {"storage/optuna_adapter.py", "tracking/mlflow_adapter.py"}
#: Private names of Optuna's and MLflow's objects that adamtune has needed (the adapters say why).
PRIVATE_NAMES = (
    "_storage|_backend|_trial_id|_study_id|_cached_frozen_trial|_n_warmup_steps|_interval_steps|_pruners|"
    "_get_bracket_id|_try_initialization|_min_resource|_reduction_factor|_min_early_stopping_rate|"
    "_build_frozen_trial_from_trial_model|_get_stale_trial_ids|_create_new_trial|_set_trial_param|_get_trials|"
    "_create_scoped_session|_logging_step|_get_latest_schema_revision|_CachedStorage|_rdb"
)
PRIVATE = re.compile(
    r"\b(?:optuna|mlflow)(?:\.\w+)*\.(_(?!_)\w+)"  # a private module or name of either library
    rf"|\.({PRIVATE_NAMES})\b"  # an attribute known to be private to them
    rf"|[\"']({PRIVATE_NAMES})[\"']"  # the same, reached by getattr
)


def test_no_private_optuna_or_mlflow_name_outside_the_two_adapters() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in ADAPTERS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert found == []
    for adapter in ADAPTERS:  # and each adapter names the versions it was checked on
        assert re.search(r"Checked on|checked on", (PACKAGE / adapter).read_text())
