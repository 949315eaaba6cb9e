"""The SQL stores' named statements (stores/sql/queries.sql, stores/queries.py): every statement
the steps run is a block of the file, every block is run, PostgreSQL's file only respells blocks
that exist, and no SQL is written in the steps themselves (issue 11.1)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from msgspool.stores import credentials, ops, search, suppressions
from msgspool.stores.queries import FILES, ROWS, Queries, parse, placeholders, pyformat

# they run named statements
STEPS = [Path(ops.__file__), Path(credentials.__file__), Path(suppressions.__file__), Path(search.__file__)]
NOT_QUERIES = {"expand", "spread", "descending", "dialect", "source"}  # Queries' own members
SQL_WORDS = re.compile(r"\b(SELECT|UPDATE|INSERT|DELETE|WITH|CREATE|DROP|ALTER|PRAGMA)\s")


def used_names(source: str) -> set[str]:
    """The statements a module runs: `tx.q.NAME` / `q.NAME`, and `q.expand("NAME", ...)`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr not in NOT_QUERIES and (
                (isinstance(node.value, ast.Attribute) and node.value.attr == "q")
                or (isinstance(node.value, ast.Name) and node.value.id == "q")):
            names.add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "expand"
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def string_literals(source: str) -> list[str]:
    """Every string constant of a module but its docstrings."""
    tree = ast.parse(source)
    docstrings = {id(body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                  and (body := node.body) and isinstance(body[0], ast.Expr)
                  and isinstance(body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_every_statement_the_steps_run_is_a_block_of_queries_sql() -> None:
    blocks = set(Queries("postgresql"))  # queries.sql's, and PostgreSQL's many-rows forms (`<name>_rows`)
    for path in STEPS:
        assert used_names(path.read_text(encoding="utf-8")) - blocks == set(), path.name
    assert set(ops.WRITES) - blocks == set()  # the state writers, run by name through ops._set_status


def test_every_block_of_queries_sql_is_run_by_a_step() -> None:
    used = set().union(set(ops.WRITES), *(used_names(path.read_text(encoding="utf-8")) for path in STEPS))
    assert set(Queries("sqlite")) - used == set()


def test_every_postgresql_block_respells_an_existing_one_with_the_same_placeholders() -> None:
    portable = Queries("sqlite").source
    for path in FILES["postgresql"][1:]:
        text = (Path(ops.__file__).parent / path).read_text(encoding="utf-8")
        own = parse(text, path)
        assert own, f"{path} has no block"
        for name, sql in own.items():
            one = name.removesuffix(ROWS)
            assert one in portable, f"{path}: {name} respells no block of queries.sql"
            if name == one:
                assert placeholders(sql) == placeholders(portable[one]), name
            else:  # the many-rows form: the rows as one JSON array, each with the one-row form's names
                columns = set(re.findall(r"(\w+) (?:text|integer|bigint|double precision)\b", sql))
                assert "rows" in placeholders(sql), name
                assert (placeholders(sql) - {"rows"}) | columns == placeholders(portable[one]), name
    assert Queries("postgresql").claim_due != Queries("sqlite").claim_due


@pytest.mark.parametrize("path", STEPS, ids=lambda p: p.name)
def test_no_sql_is_written_in_the_steps(path: Path) -> None:
    assert [s for s in string_literals(path.read_text(encoding="utf-8")) if SQL_WORDS.search(s)] == []


def test_the_scan_finds_sql_in_a_string_and_names_in_every_spelling() -> None:
    module = ('"""SELECT in a docstring is prose."""\n'
                      'def f(tx):\n    q = tx.q\n    tx.execute(tx.q.one)\n    q.two\n'
                      '    q.expand("three", ids=2)\n    return "UPDATE recipients SET x = 1"\n')
    assert used_names(module) == {"one", "two", "three"}
    assert sorted(string_literals(module)) == ["UPDATE recipients SET x = 1", "three"]


def test_sqlite_takes_positional_placeholders_and_postgresql_psycopgs_named_ones() -> None:
    sqlite, pg = Queries("sqlite"), Queries("postgresql")
    assert sqlite.delete_message == "DELETE FROM messages WHERE id = ?"
    assert pg.delete_message == "DELETE FROM messages WHERE id = %(message_id)s"
    assert pg["delete_message"] == pg.delete_message


def test_sqlite_gets_the_named_parameters_in_the_statements_order_a_name_as_often_as_it_is_used() -> None:
    q = Queries("sqlite")
    order = q.positional[q.give_back_held_by]
    assert order({"owner": "node", "idx": 2, "message_id": "m", "now": 5.0, "held": 0, "status": "queued",
                  "unused": 0}) == ("queued", 5.0, "m", 2, 0, "node", "node")
    assert q.positional[q.delete_message]({"message_id": "m"}) == ("m",)
    assert q.positional[q.any_token]({}) == ()
    two = q.expand("recipients_of_messages", ids=2)
    assert q.positional[two](q.spread(ids=["a", "b"])) == ("a", "b")


def test_psycopg_spelling_doubles_a_literal_percent_and_keeps_strings_and_casts() -> None:
    sql = "SELECT ':not' || x::text, '5%' FROM t WHERE a = :a AND b LIKE 'x%' AND c = :c_2"
    assert pyformat(sql) == ("SELECT ':not' || x::text, '5%%' FROM t WHERE a = %(a)s AND b LIKE 'x%%'"
                             " AND c = %(c_2)s")
    assert placeholders(sql) == {"a", "c_2"}


def test_an_in_list_is_spread_once_per_length() -> None:
    for q in (Queries("sqlite"), Queries("postgresql")):
        two = q.expand("recipients_of_messages", ids=2)
        assert two is q.expand("recipients_of_messages", ids=2)  # made once
    assert placeholders(Queries("postgresql").source["recipients_of_messages"]) == {"ids"}
    assert Queries.spread(ids=["a", "b"]) == {"ids_0": "a", "ids_1": "b"}
    with pytest.raises(ValueError):
        Queries("sqlite").expand("recipients_of_messages", ids=0)


def test_a_range_read_turns_around_once_per_statement_with_its_parameters_in_the_same_order() -> None:
    for q in (Queries("sqlite"), Queries("postgresql")):
        down = q.descending(q.search_by_status)
        assert down is q.descending(q.search_by_status)  # made once
        assert down == q.search_by_status.replace("ORDER BY message_id LIMIT", "ORDER BY message_id DESC LIMIT")
        with pytest.raises(ValueError):
            q.descending(q.search_check)  # its ORDER BY has no LIMIT: not a range read
    sqlite = Queries("sqlite")
    params = {"status": "held", "after": "A", "upto": "B", "limit": 5}
    assert sqlite.positional[sqlite.descending(sqlite.search_by_status)](params) == ("held", "A", "B", 5)


def test_a_name_twice_or_sql_outside_a_block_is_refused() -> None:
    assert parse("-- name: a\n-- what it does\nSELECT 1;\n\n-- name: b\nSELECT 2\n") == {"a": "SELECT 1",
                                                                                     "b": "SELECT 2"}
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="outside"):
        parse("SELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="empty"):
        parse("-- name: a\n-- nothing\n")


def test_an_unknown_name_says_where_the_statements_are() -> None:
    with pytest.raises(AttributeError, match=r"queries\.sql"):
        Queries("sqlite").no_such_query  # noqa: B018
    with pytest.raises(ValueError):
        Queries("oracle")


def test_the_flush_statement_claims_by_the_priority_classes() -> None:
    """flush_all's `priority IN (...)` lets the range use recipients_due_by_priority: it must list them all."""
    listed = re.search(r"priority IN \(([^)]*)\)", Queries("sqlite").flush_all)
    assert listed is not None
    assert tuple(int(p) for p in listed.group(1).split(",")) == ops.PRIORITY_CLASSES


def test_every_statement_compiles_on_the_sqlite_schema() -> None:
    """SQLite prepares every block against the spool's schema (EXPLAIN: compiled, not run), so a
    typo in a statement no other test reaches still fails here."""
    import sqlite3

    from msgspool.stores.sqlite import create_schema

    conn = sqlite3.connect(":memory:")
    create_schema(conn)
    q = Queries("sqlite")
    for name in q:
        sql = q.expand(name, folders=2, ids=2) if ":folders" in q.source[name] or ":ids" in q.source[name] else q[name]
        conn.execute(f"EXPLAIN {sql}", (None,) * sql.count("?"))


def test_postgresql_migrations_have_one_file_per_version_numbered_from_one() -> None:
    """Two branches that each add a migration must not land the same number: a database that has
    version N applied would skip the second file for ever."""
    from msgspool.stores.postgresql import migrations

    versions = [version for version, _name, _script in migrations()]
    assert versions == list(range(1, len(versions) + 1))
