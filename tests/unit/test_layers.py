"""The domain core stays free of I/O: nothing in msgspool/domain/ imports sockets, databases, asyncio,
or the layers built on top of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import msgspool.domain

DOMAIN = Path(msgspool.domain.__file__).parent
FORBIDDEN = ("asyncio", "socket", "sqlite3", "aiohttp", "msgspool.stores", "msgspool.spooler",
             "msgspool.transports", "msgspool.smtpd", "msgspool.web")


def imported_modules(source: str, package: str = "msgspool.domain") -> set[str]:
    """Every module a source imports, anywhere in it (also inside functions), relative ones resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def forbidden_in(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}


DOMAIN_FILES = sorted(DOMAIN.glob("*.py"))


def test_domain_package_has_modules_to_check() -> None:
    assert len(DOMAIN_FILES) > 5


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: p.name)
def test_domain_module_imports_no_io_and_no_outer_layer(path: Path) -> None:
    assert forbidden_in(imported_modules(path.read_text(encoding="utf-8"))) == set()


@pytest.mark.parametrize("path", DOMAIN_FILES, ids=lambda p: p.name)
def test_domain_module_imports_only_the_domain_from_msgspool(path: Path) -> None:
    ours = {m for m in imported_modules(path.read_text(encoding="utf-8")) if m.split(".")[0] == "msgspool"}
    assert {m for m in ours if not m.startswith("msgspool.domain")} == set()


@pytest.mark.parametrize("source", [
    "import asyncio",
    "import socket as s",
    "from sqlite3 import connect",
    "def f():\n    import aiohttp",
    "from msgspool.stores.sqlite import SpoolDB",
    "from msgspool import spooler",
    "from ..web import app",
    "from .. import transports",
])
def test_import_scan_catches_forbidden_imports_in_every_form(source: str) -> None:
    assert forbidden_in(imported_modules(source)) != set()


def test_import_scan_allows_the_standard_library_and_the_domain() -> None:
    source = "import random\nfrom dataclasses import dataclass\nfrom msgspool.domain.outcome import Reply\n"
    assert forbidden_in(imported_modules(source)) == set()
