"""The contract in docs/spec.md matches the code, and the repository stands alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from starlette.routing import Mount, Route, WebSocketRoute

from server.settings import Settings
from server.web.app import create_app

REPO = Path(__file__).resolve().parent.parent
SPEC = (REPO / "docs" / "spec.md").read_text()


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_in_the_spec(settings: Settings) -> None:
    app = create_app(settings)
    documented = {_shape(m) for m in re.findall(r"`((?:GET|POST|DELETE) /[^`? ]*)", SPEC)}
    missing = []
    for route in app.routes:
        if isinstance(route, Mount):
            continue  # /static
        if isinstance(route, WebSocketRoute):
            methods = {"GET"}
        else:
            assert isinstance(route, Route)
            methods = set(route.methods or ()) - {"HEAD"}
        missing += [
            f"{m} {route.path}" for m in methods if _shape(f"{m} {route.path}") not in documented
        ]
    assert missing == [], "routes missing from docs/spec.md"


def test_nothing_refers_to_a_file_outside_the_repository() -> None:
    outside = ".." + "/shared"
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offending = []
    for name in files:
        path = REPO / name
        if path.is_file() and path.suffix not in (".png", ".js"):
            if outside in path.read_text(errors="replace"):
                offending.append(name)
    assert offending == []


def test_links_between_the_docs_resolve() -> None:
    broken = []
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []
