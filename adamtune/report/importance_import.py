"""``optuna.importance`` without scikit-learn, for adamtune's own commands.

Optuna's ``optuna.importance`` package imports all its evaluators; the fANOVA and mean-decrease-impurity
ones import ``sklearn.ensemble`` (with SciPy: ~1.3 s on a 2-core machine, more than the rest of a
search's summary) inside Optuna's ``try_import`` block, which defers a failed import until the
evaluator is used. adamtune uses only PED-ANOVA (Optuna's default evaluator), which needs neither.

Contract: :func:`optuna_importance` returns the ``optuna.importance`` module. In a process that ran
:func:`for_commands` (every ``adamtune`` command does, from ``cli/main.py``) and had not imported
scikit-learn nor ``optuna.importance`` yet, scikit-learn is hidden while Optuna's package loads, and
visible again right after: in that process Optuna's fANOVA and mean-decrease-impurity evaluators then
raise Optuna's "install scikit-learn" error, and nothing else changes. A program that imports adamtune
as a library (no :func:`for_commands`) gets the plain import.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_hide_sklearn = False


def for_commands() -> None:
    """Let :func:`optuna_importance` hide scikit-learn in this process (an ``adamtune`` command's)."""
    global _hide_sklearn
    _hide_sklearn = True


def optuna_importance() -> ModuleType:
    """The ``optuna.importance`` module (see the module docstring for what is hidden while it loads)."""
    if not _hide_sklearn or "optuna.importance" in sys.modules or "sklearn" in sys.modules:
        return importlib.import_module("optuna.importance")
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # "import sklearn" fails: Optuna defers it
    try:
        return importlib.import_module("optuna.importance")
    finally:
        if sys.modules.get("sklearn", ...) is None:
            del sys.modules["sklearn"]
