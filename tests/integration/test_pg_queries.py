"""Every named statement of the PostgreSQL dialect (stores/sql/queries.sql with
postgresql_queries.sql's blocks) is valid on the spool's migrated schema: PostgreSQL plans each
one (EXPLAIN, not run), so a spelling only SQLite takes cannot hide in a rarely used block."""

from __future__ import annotations

import psycopg

from msgspool.stores.postgresql import QUERIES, upgrade
from msgspool.stores.queries import placeholders
from tests.support import pg


def test_postgresql_plans_every_named_statement() -> None:
    with pg.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
        for name in QUERIES:
            lists = {key: 2 for key in ("folders", "ids") if f":{key}" in QUERIES.source[name]}
            sql = QUERIES.expand(name, **lists) if lists else QUERIES[name]
            names = placeholders(QUERIES.source[name])
            params = {**{n: None for n in names}, **QUERIES.spread(**{key: ["x", "y"] for key in lists})}
            conn.execute(f"EXPLAIN {sql}", params)
