"""Print the runtime requirements of pyproject.toml, one per line, for `pip install -r`.

Used by the Dockerfile to install adamtune's dependencies in a layer that depends on pyproject.toml
alone, before the source is copied in (so editing the source does not reinstall them):

    python docker/requirements.py pyproject.toml --extra postgres --exclude torch > requirements.txt

``--exclude`` drops requirements by project name (torch is installed beforehand, from the index that
the TORCH_VARIANT build argument picks). Standard library only: it runs in the bare build image.
"""

from __future__ import annotations

import argparse
import re
import sys

import tomllib

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def project_name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement (``"psycopg[binary]>=3.1"`` -> ``"psycopg"``)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: dict, extras: list[str], exclude: list[str]) -> list[str]:
    """``project.dependencies`` plus each extra's, without the excluded names, in order, no duplicates."""
    project = pyproject.get("project", {})
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise KeyError(f"pyproject.toml has no extra {', '.join(unknown)}; it has {', '.join(sorted(optional))}")
    dropped = {project_name(name) for name in exclude}
    found: list[str] = []
    for requirement in [*project.get("dependencies", []), *(r for extra in extras for r in optional[extra])]:
        if project_name(requirement) not in dropped and requirement not in found:
            found.append(requirement)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", help="path to pyproject.toml")
    parser.add_argument("--extra", action="append", default=[], help="also the requirements of this extra")
    parser.add_argument("--exclude", action="append", default=[], help="leave out this project (by name)")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    try:
        lines = requirements(pyproject, args.extra, args.exclude)
    except KeyError as exc:
        print(f"requirements.py: {exc.args[0]}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
