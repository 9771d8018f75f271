"""Load a Python file that is not part of a package (the Docker entrypoint, its requirements script) as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def load_module(name: str, path: Path) -> Any:
    """Import ``path`` under the module name ``name`` and return the module."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
