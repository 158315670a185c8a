"""The layers hold: a worker process loads none of the web (no Starlette, no Jinja, no
hub), and the layers contract (``lint-imports``, in ``make lint``) is the one in
pyproject.toml that docs/architecture.md describes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_worker_loads_nothing_of_the_web() -> None:
    check = (
        "import sys, jobs.worker, server.cli;"
        "loaded = [m for m in ('starlette', 'jinja2', 'uvicorn', 'server.live.hub',"
        " 'server.web.app') if m in sys.modules];"
        "print(','.join(loaded))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.strip() == ""


def test_every_layer_of_the_contract_is_a_package_of_the_map() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    architecture = (REPO / "docs" / "architecture.md").read_text()
    for layer in layers:
        for module in layer.split("|"):
            assert f"`{module.strip().replace('.', '/')}" in architecture, module


def test_the_architecture_map_names_every_module() -> None:
    architecture = (REPO / "docs" / "architecture.md").read_text()
    modules = [
        p.relative_to(REPO).as_posix()
        for root in ("server", "jobs")
        for p in (REPO / root).rglob("*.py")
        if p.name != "__init__.py" and "migrations" not in p.parts
    ]
    assert [m for m in modules if m not in architecture] == []


def test_servers_top_level_holds_at_most_eight_modules() -> None:
    top = [p.name for p in (REPO / "server").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 8, top
