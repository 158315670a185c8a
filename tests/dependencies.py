"""The names of settle's dependencies, unpinned (``make test-latest`` installs the newest
release of each): ``python -m tests.dependencies``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def names() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    return [re.split(r"[=<>~!; ]", requirement, maxsplit=1)[0] for requirement in wanted]


if __name__ == "__main__":
    print(" ".join(names()))
