"""Tasks: the ``Task``/``LoopTask`` contracts, the built-in tasks, and the registry of their names.

May import: ``core``, ``data`` (and, for type annotations only, ``training``'s ``TrialContext``). Never
Optuna, MLflow or the study database.

The registry: built-in task names and user tasks given as ``module:name``.

A user task ``module:name`` names a :class:`~adamtune.tasks.loop.LoopTask` (or built-in-style
:class:`~adamtune.tasks.base.Task`) object in ``module``, or a function of no arguments that returns one.

The registry is a plain dict of name -> ``"module:factory"`` so that listing names (for ``--help`` or an
"unknown task" error) imports nothing heavy; the task module, and torch with it, is imported only by
:func:`resolve_task`.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from adamtune.core.errors import TaskError

if TYPE_CHECKING:
    from adamtune.tasks.base import Task
    from adamtune.tasks.loop import LoopTask

BUILTIN_TASKS: dict[str, str] = {
    "digits": "adamtune.tasks.digits:make_task",
    "diabetes": "adamtune.tasks.diabetes:task",
    "synthetic": "adamtune.tasks.synthetic:make_task",
    "mnist-logreg": "adamtune.tasks.mnist:make_logreg_task",
    "mnist-mlp": "adamtune.tasks.mnist:make_mlp_task",
    "cifar10": "adamtune.tasks.cifar:make_task",
    "cifar10-paper": "adamtune.tasks.cifar:make_paper_task",
    "imdb-bow": "adamtune.tasks.imdb:make_task",
    "tinylm": "adamtune.tasks.tinylm:make_task",
}

_USER_TASK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_task(name: str) -> bool:
    """True for ``module:function`` references, which name user tasks rather than built-ins."""
    return ":" in name


def check_task_name(name: str) -> None:
    """Raise :class:`TaskError` unless ``name`` is a built-in task or a well-formed ``module:function``.

    Cheap: imports nothing, so the CLI can reject a bad name before touching any storage.
    """
    if name in BUILTIN_TASKS:
        return
    if is_user_task(name):
        if not _USER_TASK.match(name):
            raise TaskError(f"task {name!r} is not of the form 'package.module:function'")
        return
    valid = ", ".join(sorted(BUILTIN_TASKS))
    raise TaskError(f"unknown task {name!r}; valid tasks: {valid}, or 'package.module:function' for your own")


def resolve_task(name: str) -> Task | LoopTask:
    """Import and build the task called ``name``.

    User tasks are imported from ``sys.path`` with the current directory first, as ``python -m`` would.
    ``module:name`` is a ``LoopTask`` or ``Task`` object, or a factory called with no arguments that
    returns one.

    Raises:
        TaskError: the name is unknown, the module or attribute cannot be imported, or it is (or its
            factory returns) something else. Exceptions raised inside the user's module or factory
            are reported in one line.
    """
    check_task_name(name)
    reference = BUILTIN_TASKS.get(name, name)
    module_name, _, function_name = reference.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TaskError(
            f"cannot import {module_name!r} for task {name!r} ({exc}); "
            "run from the directory that holds it or install it"
        ) from exc
    except Exception as exc:  # a user module that fails on import: report it in one line
        raise TaskError(f"importing {module_name!r} for task {name!r} failed: {type(exc).__name__}: {exc}") from exc
    from adamtune.tasks.base import Task
    from adamtune.tasks.loop import LoopTask

    factory = getattr(module, function_name, None)
    if isinstance(factory, (Task, LoopTask)):
        return factory
    if not callable(factory):
        raise TaskError(
            f"module {module_name!r} has no LoopTask or function {function_name!r} (task {name!r}); "
            f"define {function_name} = adamtune.LoopTask(...) there"
        )
    try:
        task = factory()
    except Exception as exc:
        raise TaskError(f"task factory {reference!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, (Task, LoopTask)):
        raise TaskError(f"task factory {reference!r} returned {type(task).__name__}, not an adamtune.LoopTask or Task")
    return task
