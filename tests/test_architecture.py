"""The arrows of DESIGN.md, checked mechanically: protocol cores stay pure, the store imports
nothing above it, services never reach for the network layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mailhouse"

RULES = {
    "proto": {"mailhouse.net", "mailhouse.store", "mailhouse.service", "mailhouse.pipeline",
              "mailhouse.app", "mailhouse.config", "mailhouse.queue", "asyncio", "socket",
              "ssl", "sqlite3", "time", "selectors", "threading"},
    "store": {"mailhouse.net", "mailhouse.proto", "mailhouse.service", "mailhouse.pipeline",
              "mailhouse.app", "mailhouse.config", "mailhouse.queue"},
    "service": {"mailhouse.net", "mailhouse.app"},
    "pipeline": {"mailhouse.net", "mailhouse.app"},
    "queue": {"mailhouse.net", "mailhouse.app"},
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_layer_imports_point_one_way(package: str) -> None:
    forbidden = RULES[package]
    bad = []
    for path in sorted((SRC / package).rglob("*.py")):
        for name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert bad == []
