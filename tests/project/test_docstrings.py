"""The public API's docstrings: every exported name documents itself, its members and every parameter.

The public API is what ``adamtune`` exports (``adamtune.__all__``, loaded lazily) and the
:class:`~adamtune.core.errors.AdamtuneError` hierarchy; docs/reference/python.md renders it with mkdocstrings
(Google style). Each public class, function, method and property has a docstring whose first line is a
summary; every parameter of a signature (a class's constructor included) is in the docstring's ``Args:``
section (a dataclass's fields may be in ``Attributes:``), and nothing is documented there that the
signature lacks. A new undocumented parameter fails here. Ruff's pydocstyle rules (``D``, Google
convention, pyproject.toml) check the format of the same modules, and griffe's Google parser, which
``mkdocs build --strict`` turns into errors, must parse every docstring without a warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import adamtune
import adamtune.core.errors as errors

ROOT = Path(__file__).resolve().parents[2]

#: Section titles whose entries are parameters (Google style, as griffe reads them).
ARGS_TITLES = ("Args", "Arguments", "Parameters", "Params", "Keyword Args", "Keyword Arguments", "Other Parameters")
ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:")
#: A Sphinx role (``:class:`X```): mkdocstrings renders Markdown, where it shows as is. Cross-references
#: to the documented API are written ``[X][adamtune.api.X]``; to anything else, as ``X`` in backticks.
SPHINX_ROLE = re.compile(r":(class|func|meth|attr|data|mod|exc|obj):`")


def _exports() -> list[str]:
    return sorted(name for name in adamtune.__all__ if name != "__version__")


def _error_classes() -> list[str]:
    return sorted(
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.AdamtuneError)
    )


def _public(name: str) -> Any:
    """``adamtune.<name>``, or the error class of that name (the Lightning helpers need the dev extra's lightning)."""
    if name in _error_classes():
        return getattr(errors, name)
    return getattr(adamtune, name)


def section(doc: str, titles: tuple[str, ...]) -> list[str] | None:
    """The entry names of the Google-style section titled one of ``titles`` (None: no such section)."""
    lines = doc.expandtabs().splitlines()
    for i, line in enumerate(lines):
        if line.strip().rstrip(":") in titles and line.strip().endswith(":"):
            indent = len(line) - len(line.lstrip())
            names: list[str] = []
            entry_indent: int | None = None
            for body in lines[i + 1 :]:
                if not body.strip():
                    continue
                depth = len(body) - len(body.lstrip())
                if depth <= indent:
                    break
                if entry_indent is None:
                    entry_indent = depth
                assert depth >= entry_indent, f"a line of {titles[0]} indented less than its entries: {body!r}"
                if depth == entry_indent:
                    match = ENTRY.match(body.strip())
                    assert match, f"not a 'name: description' entry in {titles[0]}: {body.strip()!r}"
                    names.append(match.group(1).lstrip("*"))
            return names
    return None


def check_summary(doc: str | None, what: str) -> str:
    assert doc and doc.strip(), f"{what} has no docstring"
    role = SPHINX_ROLE.search(doc)
    assert role is None, f"{what}: a Sphinx role {role.group(0)!r} (Markdown shows it as is): use [name][path]"
    doc = inspect.cleandoc(doc)
    lines = doc.splitlines()
    assert lines[0].strip(), f"{what}: the docstring's first line must be its summary"
    assert len(lines) == 1 or not lines[1].strip(), f"{what}: a one-line summary, then a blank line"
    return doc


def check_parameters(function: Any, doc: str, what: str, *, attributes_too: bool = False) -> None:
    """Every parameter of ``function`` is in ``doc``'s Args (or, ``attributes_too``, Attributes); no stray."""
    parameters = [name for name in inspect.signature(function).parameters if name not in ("self", "cls")]
    args = section(doc, ARGS_TITLES) or []
    attributes = (section(doc, ("Attributes",)) or []) if attributes_too else []
    missing = [name for name in parameters if name not in args and name not in attributes]
    assert not missing, f"{what}: parameters missing from the docstring's Args section: {missing}"
    extra = [name for name in args if name not in parameters]
    assert not extra, f"{what}: documented parameters not in the signature: {extra}"


def members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties a class defines or inherits from adamtune's own classes."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("adamtune"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen or name in fields:
                continue
            seen.add(name)
            if isinstance(value, (staticmethod, classmethod)):
                yield name, value.__func__
            elif isinstance(value, property) or inspect.isfunction(value):
                yield name, value


def test_the_public_names_are_the_lazy_exports() -> None:
    assert set(_exports()) == set(adamtune._LAZY)


@pytest.mark.parametrize("name", _exports() + _error_classes())
def test_a_public_name_documents_itself_its_members_and_every_parameter(name: str) -> None:
    obj = _public(name)
    doc = check_summary(obj.__doc__, name)
    if not isinstance(obj, type):
        check_parameters(obj, doc, name)
        return
    own_init = "__init__" in vars(obj) and obj.__module__.startswith("adamtune")
    if own_init or dataclasses.is_dataclass(obj):
        check_parameters(obj, doc, f"{name} (its constructor)", attributes_too=dataclasses.is_dataclass(obj))
    for member, value in members(obj):
        what = f"{name}.{member}"
        if isinstance(value, property):
            check_summary(value.__doc__, what)
        else:
            check_parameters(value, check_summary(value.__doc__, what), what)


def test_the_checker_finds_an_undocumented_and_a_stray_parameter() -> None:
    def documented(a: int, b: int) -> None:
        """Do it.

        Args:
            a: One.
            c: Not a parameter.
        """

    doc = inspect.cleandoc(documented.__doc__ or "")
    with pytest.raises(AssertionError, match=r"missing from the docstring's Args section: \['b'\]"):
        check_parameters(documented, doc, "documented")
    with pytest.raises(AssertionError, match=r"not in the signature: \['c'\]"):
        check_parameters(lambda a, b: None, doc.replace("a: One.", "a: One.\n    b: Two."), "lambda")
    with pytest.raises(AssertionError, match="has no docstring"):
        check_summary(None, "nothing")


def test_griffe_parses_every_public_docstring_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """What ``mkdocs build --strict`` fails on: a parameter documented but not in the signature, bad indents."""
    import griffe  # mkdocstrings' parser, in the dev extra

    package = griffe.load("adamtune", search_paths=[str(ROOT)], docstring_parser="google")
    paths = [f"{adamtune._LAZY[name]}.{name}" for name in _exports()]
    paths += [f"adamtune.core.errors.{name}" for name in _error_classes()]
    objects = []
    for path in paths:
        obj = package[path.removeprefix("adamtune.")]
        objects.append(obj)
        if obj.is_class:
            objects += [m for n, m in obj.all_members.items() if not n.startswith("_") and m.docstring]
    assert len(objects) > len(paths)  # members too
    with caplog.at_level(logging.WARNING):
        for obj in objects:
            assert obj.docstring is not None, f"{obj.path} has no docstring"
            obj.docstring.parse("google")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, "griffe warns about the public docstrings:\n" + "\n".join(warnings)


def test_the_public_modules_are_importable_by_their_documented_paths() -> None:
    """docs/reference/python.md names the defining modules (``::: adamtune.api.search``): they must exist."""
    page = (ROOT / "docs" / "reference" / "python.md").read_text()
    for path in re.findall(r"^::: ([\w.]+)", page, flags=re.MULTILINE):
        module, _, attribute = path.rpartition(".")
        try:
            target = importlib.import_module(path)
        except ImportError:
            target = getattr(importlib.import_module(module), attribute, None)
        assert target is not None, f"docs/reference/python.md names {path}, which does not exist"
