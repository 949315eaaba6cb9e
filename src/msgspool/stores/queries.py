"""The SQL stores' statements, by name (procrastinate's `sql/queries.sql` shape, issue 11.1).

Every statement the policy functions (stores/ops.py) run is one block of `sql/queries.sql`::

    -- name: claim_due
    -- One priority class's due recipients, oldest due first, claimed for :owner.
    UPDATE recipients SET ...

written in the spelling both SQLite and PostgreSQL take, with named placeholders (`:owner`).
`sql/postgresql_queries.sql` holds only the blocks PostgreSQL says differently, under the same
names, and the many-rows forms (`<name>_rows`) of a few. `Queries(dialect)` parses the files
once and hands each statement out already in the dialect's placeholder style (psycopg's
`%(owner)s`, a literal `%` doubled; SQLite's `?`, with the order of the names in `positional`),
so running one costs an attribute lookup and, on SQLite, a dict lookup — never string work.

One kind of statement cannot be constant: an IN list whose length the caller decides (the
folders and page of `queue list`). Its block says `IN (:folders)`; `Queries.expand` makes the
statement for n values once per (name, n) and `spread` the parameters to go with it. Nor is
the direction of a range read (a queue search newest first): `Queries.descending` turns a
statement's one `ORDER BY x LIMIT` around.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

# A dialect file may also add the many-rows form of a portable statement, as `<name>_rows`: one
# statement for the rows of a whole group commit (stores/ops.py `_many`), where a statement costs
# a round trip and a run of the triggers (PostgreSQL); SQLite runs the one-row form per row.
ROWS = "_rows"
FILES = {"sqlite": ("sql/queries.sql",), "postgresql": ("sql/queries.sql", "sql/postgresql_queries.sql")}
_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$")
# A string literal (left alone), a PostgreSQL cast `::`, or a named placeholder.
_PLACEHOLDER = re.compile(r"'[^']*'|::|(?<![:\w]):([A-Za-z_]\w*)")
_ORDER_LIMIT = re.compile(r"\bORDER BY (\w+) LIMIT\b")


def parse(text: str, source: str = "queries.sql") -> dict[str, str]:
    """The blocks of a queries file by name: each from its `-- name:` line to the next, without
    its comment lines (whole lines starting `--`) and trailing `;`. A name given twice is an error."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line.strip()):
            name = header.group(1)
            if name in blocks:
                raise ValueError(f"{source}:{number}: the query {name!r} is defined twice")
            current = blocks[name] = []
        elif current is not None and line.strip() and not line.lstrip().startswith("--"):
            current.append(line.rstrip())
        elif current is None and line.strip() and not line.lstrip().startswith("--"):
            raise ValueError(f"{source}:{number}: SQL outside a named block")
    out = {}
    for name, lines in blocks.items():
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"{source}: the query {name!r} is empty")
        out[name] = sql
    return out


def pyformat(sql: str) -> str:
    """`sql` with psycopg's placeholders: `:name` -> `%(name)s`, a literal `%` doubled."""
    def placeholder(match: re.Match[str]) -> str:
        return match.group(0) if match.group(1) is None else f"%({match.group(1)})s"

    return _PLACEHOLDER.sub(placeholder, sql.replace("%", "%%"))


def qmark(sql: str) -> tuple[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]]:
    """`sql` with SQLite's positional placeholders (`:name` -> `?`), and the function that turns
    the named parameters into the tuple it takes. Measured: sqlite3 binds a mapping by looking up
    each parameter's name, ~0.2 µs a parameter more than a tuple (4 µs for a message row), while
    itemgetter makes the tuple in a fraction of that."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)
        names.append(match.group(1))
        return "?"

    positional = _PLACEHOLDER.sub(placeholder, sql)
    if not names:
        return positional, _no_parameters
    if len(names) == 1:
        return positional, functools.partial(_one_parameter, names[0])
    return positional, operator.itemgetter(*names)


def _no_parameters(_parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    return ()


def _one_parameter(name: str, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    return (parameters[name],)


def placeholders(sql: str) -> set[str]:
    """The names of the placeholders `sql` (in the files' spelling) takes."""
    return {m.group(1) for m in _PLACEHOLDER.finditer(sql) if m.group(1) is not None}


def _read(path: str) -> str:
    return resources.files("msgspool.stores").joinpath(path).read_text(encoding="utf-8")


class Queries:
    """The statements of one dialect ("sqlite", "postgresql"), by attribute or by key."""

    def __init__(self, dialect: str) -> None:
        if dialect not in FILES:
            raise ValueError(f"no queries for the dialect {dialect!r}")
        common, *overrides = FILES[dialect]
        portable = parse(_read(common), common)
        source = dict(portable)
        for path in overrides:
            for name, sql in parse(_read(path), path).items():
                if name not in portable and not (name.endswith(ROWS) and name[:-len(ROWS)] in portable):
                    raise ValueError(f"{path}: {name!r} overrides no query of {common}")
                source[name] = sql
        self.dialect = dialect
        self.source: Mapping[str, str] = source  # the files' spelling, for tests and `expand`
        # SQLite's statements take their parameters by position: `positional` maps each one to
        # the function that makes the tuple from the named parameters (SQLiteConnection uses it).
        self.positional: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {}
        self._sql = {name: self._translate(sql) for name, sql in source.items()}
        self.__dict__.update(self._sql)

    def _translate(self, sql: str) -> str:
        if self.dialect == "postgresql":
            return pyformat(sql)
        positional, order = qmark(sql)
        self.positional[positional] = order
        return positional

    def __getattr__(self, name: str) -> str:  # only for names not set in __init__
        raise AttributeError(f"no query named {name!r} (stores/sql/queries.sql)")

    def __getitem__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} (stores/sql/queries.sql)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._sql)

    def __contains__(self, name: object) -> bool:
        return name in self._sql

    def expand(self, name: str, **sizes: int) -> str:
        """Query `name` with each list placeholder `:x` of `sizes` spread into `:x_0, ..., :x_{n-1}`
        (made once per name and sizes)."""
        return self._expand(name, tuple(sorted(sizes.items())))

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one Queries per dialect, alive as long as the process
    def _expand(self, name: str, sizes: tuple[tuple[str, int], ...]) -> str:
        sql = self.source[name]
        for key, n in sizes:
            if n < 1:
                raise ValueError(f"an IN list needs a value: {key} of {name!r}")
            sql = re.sub(rf"(?<![:\w]):{key}\b", ", ".join(f":{key}_{i}" for i in range(n)), sql)
        return self._translate(sql)

    def descending(self, sql: str) -> str:
        """A statement of these (as handed out) that reads one range in one `ORDER BY x LIMIT`,
        reading it from its top (`ORDER BY x DESC LIMIT`; SQLite and PostgreSQL walk the same
        index backwards): a queue search newest first (stores/search.py). Made once per statement."""
        return self._descending(sql)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - as _expand
    def _descending(self, sql: str) -> str:
        turned, count = _ORDER_LIMIT.subn(r"ORDER BY \1 DESC LIMIT", sql)
        if count != 1:
            raise ValueError(f"no single ORDER BY ... LIMIT to read backwards in: {sql}")
        if self.dialect == "sqlite":
            self.positional[turned] = self.positional[sql]  # the same placeholders, in the same order
        return turned

    @staticmethod
    def spread(**lists: Sequence[Any]) -> dict[str, Any]:
        """The parameters for `expand`'s placeholders: {"x_0": lists["x"][0], ...}."""
        return {f"{key}_{i}": value for key, values in lists.items() for i, value in enumerate(values)}
