"""The README's configuration table is config.py's `settings_doc()`, row for row: it cannot drift."""

from __future__ import annotations

import html
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import settings_doc

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def toml_literal(value: Any) -> str:
    """How the README writes a default: as the TOML literal an operator would type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, for the plain strings config.py uses
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML literal for {value!r}")


def code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), f"expected a `code` cell, got {cell!r}"
    return cell[1:-1]


def table_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert rows[0] == ["key", "default", "meaning"]
    assert all(set(cell) <= {"-", ":"} for cell in rows[1])
    for row in rows[2:]:
        assert len(row) == 3, f"a row needs exactly 3 cells (no '|' inside): {row}"
    return rows[2:]


def test_readme_settings_table_lists_every_setting_in_config_order() -> None:
    assert [code(row[0]) for row in table_rows()] == [key for key, _default, _doc in settings_doc()]


@pytest.mark.parametrize(("key", "default"), [(key, default) for key, default, _doc in settings_doc()])
def test_readme_settings_table_shows_the_default_as_its_toml_literal(key: str, default: Any) -> None:
    defaults = {code(row[0]): code(row[1]) for row in table_rows()}
    assert defaults.get(key) == toml_literal(default)


def test_readme_settings_table_meaning_is_the_sentence_from_config() -> None:
    meanings = [html.unescape(row[2]) for row in table_rows()]
    assert meanings == [doc for _key, _default, doc in settings_doc()]


@pytest.mark.parametrize(("key", "default"), [(key, default) for key, default, _doc in settings_doc()])
def test_toml_literal_reads_back_as_the_default_with_its_type(key: str, default: Any) -> None:
    value = tomllib.loads(f"{key} = {toml_literal(default)}")[key]
    assert value == default and type(value) is type(default)
