"""The dependency rule of ARCHITECTURE.md, checked by walking every import (ast).

``serve -> cluster (bootstrap/wiring) -> actors/<kind>/actor -> actors/<kind>/model
-> streams.events``: a package imports only the packages below it; ``streams``
imports no other part of ours; a model imports no Ray, no shell and no wiring;
and no first-party import hides inside a function to dodge a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("actors", "serve", "cluster", "streams", "ledger")
# What each package may import of ours (besides itself). A DAG, so no cycle.
MAY_IMPORT = {
    "serve": {"cluster", "actors", "streams", "ledger"},
    "cluster": {"actors", "streams", "ledger"},
    "ledger": {"streams"},
    "actors": {"streams"},
    "streams": set(),
}
# What actors may import of streams: the events, and the tracing helpers (cross-cutting,
# they import nothing of ours) that carry a trace across Ray calls.
ACTORS_SEE = ("streams.events", "streams.tracing")
# Inside actors/, what a pure model module may import of ours.
MODEL_MAY_IMPORT = ("actors.messages", "actors.pricing.engine", "actors.fraud.rules")
MODEL_MODULES = ("model.py", "saga.py", "ports.py", "engine.py", "rules.py")


def _modules() -> list[Path]:
    return sorted(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module, at top level, line) for every import of ours in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in OURS or name.split(".")[0] == "ray":
                found.append((name, id(node) in top, node.lineno))
    return found


def violations() -> list[str]:
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        package = rel.split("/")[0]
        is_model = package == "actors" and path.name in MODEL_MODULES
        for module, top_level, line in _imports(path):
            root = module.split(".")[0]
            where = f"{rel}:{line} imports {module}"
            if root == "ray":
                if is_model:
                    found.append(f"{where} (a model imports no Ray)")
                continue
            if not top_level:
                found.append(f"{where} inside a function")
            if root != package and root not in MAY_IMPORT[package]:
                found.append(f"{where} ({package} may import {sorted(MAY_IMPORT[package])})")
            if package == "actors" and root == "streams" and module not in ACTORS_SEE:
                found.append(f"{where} (actors see only {', '.join(ACTORS_SEE)})")
            if is_model and root == "actors" and not module.startswith(MODEL_MAY_IMPORT):
                kind_model = ".".join(rel.removesuffix(".py").split("/")[:2]) + ".model"
                if module != kind_model:
                    found.append(f"{where} (a model imports only models and messages)")
    return found


def test_the_dependency_rule_holds():
    found = violations()
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("def f():\n    from serve.app import api\n", True),
        ("import ray\n", False),
        ("from streams.events import Envelope\n", False),
    ],
)
def test_the_walker_sees_imports(source, bad, tmp_path):
    path = tmp_path / "m.py"
    path.write_text(source)
    first = _imports(path)[0]
    assert first[1] is (not bad)
