"""Every queue-search term reads an index, on SQLite and on PostgreSQL (stores/search.py), so that
a search on a spool of millions can never silently become a scan of the table: the page's driving
statement is planned (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with sequential scans
priced out, so that a plan without a usable index still shows its Seq Scan) and must name the
index this term's range is read from; the check of the candidates and the page's read go by key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from msgspool.domain.selector import Selector, parse_selector
from msgspool.stores import search
from msgspool.stores.postgresql import QUERIES, upgrade
from msgspool.stores.sqlite import connect, create_schema
from tests.support import pg

# term -> the index its pages are read from (SQLite's name of the primary key; PostgreSQL's)
DRIVEN = {
    "": "messages_search_folder",  # no term: the outbox
    "folder=inbox": "messages_search_folder",
    "folder=*": "PRIMARY",
    "folder=inbox|sent": "PRIMARY",
    "mailbox=bob@example.org": "messages_search_mailbox",
    "sender=a@example.com": "messages_search_sender",
    "sender=<>": "messages_search_sender",
    "sender=@example.com": "messages_search_sender_domain",
    "recipient=a@example.com": "recipients_search_address",
    "recipient=@example.com": "recipients_search_domain",
    "destination=mx.example.com": "recipients_search_destination",
    "status=held": "recipients_search_status",
    # the terms without an index of their own read the folder's range, a bounded window a page
    "transport=smtp": "messages_search_folder",
    "subject=invoice": "messages_search_folder",
    "older-than=1h": "messages_search_folder",
    "newer-than=1h": "messages_search_folder",
    "recipient=a@example.com,status=deferred,subject=x": "recipients_search_address",
}
PRIMARY = {"sqlite": "sqlite_autoindex_messages_1", "postgresql": "messages_pkey"}
# Terms every filled row meets: PostgreSQL may rightly read the primary key's range in id order
# instead, as cheap (the page's LIMIT stops it).
EVERY_ROW = {"", "transport=smtp", "subject=invoice", "older-than=1h", "newer-than=1h"}


CANDIDATES = "[" + ",".join(f'"{n:018x}"' for n in range(5000, 5064)) + "]"  # a window of 64


def statements(conn: Any, text: str, newest_first: bool = False) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The driver's statement for the selector `text` (read upwards, or newest first), its
    parameters, and those of search_check."""
    where = parse_selector(text) if text else Selector()
    now = time.time()
    params = search.search_params(where, now)
    after, upto = search.id_range(where, now)
    return search.driver(conn, params, newest_first), {**params, "after": after, "upto": upto, "limit": 50}, {
        **params, "candidates": CANDIDATES}


DIRECTIONS = pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])


def sqlite_plan(conn: Any, sql: str, params: dict[str, Any]) -> str:
    rows = sqlite_execute(conn, f"EXPLAIN QUERY PLAN {sql}", conn.q.positional[sql](params))
    return "\n".join(str(row[3]) for row in rows)


def sqlite_execute(conn: Any, sql: str, args: tuple[Any, ...]) -> list[Any]:
    return list(type(conn).__mro__[1].execute(conn, sql, args))  # sqlite3's own: the text is not a named query


@pytest.fixture(scope="module")
def sqlite_conn(tmp_path_factory: pytest.TempPathFactory) -> Any:
    conn = connect(Path(tmp_path_factory.mktemp("plans")) / "spool.db")
    create_schema(conn)
    yield conn
    conn.close()


# 20,000 outbox messages of one recipient each, analyzed: PostgreSQL plans by its statistics.
FILL = [
    "INSERT INTO contents (id, data) OVERRIDING SYSTEM VALUE VALUES (1, 'x')",
    "INSERT INTO messages (id, folder, sender, size, submitted_at, content_id, subject)"
    " SELECT lpad(to_hex(n), 18, '0'), 'outbox', 'sender' || (n % 100) || '@example.net', 1000,"
    " 1700000000 + n, 1, 'message ' || n FROM generate_series(1, 20000) AS n",
    "INSERT INTO recipients (message_id, idx, address, addrtype, type, transport, nexthop, status)"
    " SELECT lpad(to_hex(n), 18, '0'), 0, 'user' || n || '@example.com', 'SMTP', 'to', 'smtp',"
    " 'mx' || (n % 50) || '.example.com', 'deferred' FROM generate_series(1, 20000) AS n",
    "ANALYZE",
]


@pytest.fixture(scope="module")
def pg_conn() -> Any:
    with pg.fresh_database() as url, psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
        for statement in FILL:
            conn.execute(statement)
        yield conn


def pg_plan(conn: Any, sql: str, params: dict[str, Any], *, seqscan: bool = True) -> str:
    conn.execute(f"SET enable_seqscan = {'on' if seqscan else 'off'}")
    return "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}", params))


@DIRECTIONS
@pytest.mark.parametrize("text", sorted(DRIVEN))
def test_each_term_s_pages_read_its_index_on_sqlite(sqlite_conn: Any, text: str, newest_first: bool) -> None:
    sql, params, check = statements(sqlite_conn, text, newest_first)
    plan = sqlite_plan(sqlite_conn, sql, params)
    index = PRIMARY["sqlite"] if DRIVEN[text] == "PRIMARY" else DRIVEN[text]
    assert f"INDEX {index} (" in plan, plan
    assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan  # a range in order: no scan, no sort
    checked = sqlite_plan(sqlite_conn, sqlite_conn.q.search_check, check)
    assert "SEARCH m USING INDEX sqlite_autoindex_messages_1 (id=?)" in checked, checked
    assert "SCAN m" not in checked and "SCAN r" not in checked, checked


def test_a_page_is_read_by_key_on_sqlite(sqlite_conn: Any) -> None:
    sql = sqlite_conn.q.messages_by_ids
    plan = sqlite_plan(sqlite_conn, sql, {"page_ids": CANDIDATES})
    assert "SEARCH messages USING INDEX sqlite_autoindex_messages_1 (id=?)" in plan, plan


@DIRECTIONS
@pytest.mark.parametrize("text", sorted(DRIVEN))
def test_each_term_s_pages_read_its_index_on_postgresql(pg_conn: Any, text: str, newest_first: bool) -> None:
    class Tx:
        q = QUERIES

    sql, params, check = statements(Tx, text, newest_first)
    # Sequential scans priced out: on these 20,000 rows one could be cheaper than an index for
    # the terms every row meets, where it never is on the millions the index is for.
    plan = pg_plan(pg_conn, sql, params, seqscan=False)
    indexes = {PRIMARY["postgresql"] if DRIVEN[text] == "PRIMARY" else DRIVEN[text]}
    if text in EVERY_ROW:
        indexes.add(PRIMARY["postgresql"])
    scan = "Scan Backward using" if newest_first else "Scan using"
    assert any(f"{scan} {index} on" in plan for index in indexes), plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan
    checked = pg_plan(pg_conn, QUERIES.search_check, check)
    # by the candidates' keys, or by a term's own index where statistics say it is narrower
    assert "Index Scan" in checked and "Seq Scan" not in checked, checked


def test_a_page_is_read_by_key_on_postgresql(pg_conn: Any) -> None:
    plan = pg_plan(pg_conn, QUERIES.messages_by_ids, {"page_ids": CANDIDATES})
    assert "messages_pkey" in plan and "Seq Scan" not in plan, plan


def test_a_batch_s_outcomes_and_finished_messages_are_found_by_key_not_by_a_scan_of_the_outbox(
        pg_conn: Any) -> None:
    """The many-rows statements of a batch (sql/postgresql_queries.sql) read their rows by key:
    joined to the batch's JSON rows, the planner read the whole outbox's range instead (a bitmap
    scan of 20,000 rows to move 10 messages to Sent, 6 ms; with 1,000,000 queued, a scan a batch)."""
    ids = [f"{n:018x}" for n in range(5000, 5010)]
    finished = json.dumps([{"message_id": i, "now": 1.0} for i in ids])
    settled = json.dumps([{"message_id": i, "idx": 0, "attempted": 1, "now": 1.0, "wait": 0, "once": 0} for i in ids])
    for sql, params in ((QUERIES.finish_to_sent_rows, {"sent": "sent", "outbox": "outbox", "rows": finished}),
                        (QUERIES.settle_recipient_rows, {"status": "delivered", "rows": settled})):
        plan = pg_plan(pg_conn, sql, params)
        assert "Seq Scan on messages" not in plan and "Seq Scan on recipients" not in plan, plan
        assert "Bitmap Heap Scan" not in plan, plan
        assert "= ANY ($0)" in plan, plan  # the batch's keys drive the index read


# What a report that came back as mail may be about (spooler/bounces.py): the messages of its
# sender relayed to its recipient. A bounce per sent message must not scan the Sent folder.
RELAYED_TO = {"sender": "sender5@example.net", "recipient": "user5@example.com", "since": 0.0, "limit": 10}


def test_what_a_returned_report_is_about_is_looked_up_by_index_on_sqlite(sqlite_conn: Any) -> None:
    plan = sqlite_plan(sqlite_conn, sqlite_conn.q.relayed_to, RELAYED_TO)
    assert "USING INDEX messages_search_sender" in plan or "USING INDEX recipients_search_address" in plan, plan
    assert "SCAN m" not in plan and "SCAN r" not in plan, plan


def test_what_a_returned_report_is_about_is_looked_up_by_index_on_postgresql(pg_conn: Any) -> None:
    # As on a spool that has relayed for a while: most recipients delivered (the statistics of
    # the fill say none are, and the planner would rightly start from the status).
    with pg_conn.transaction(force_rollback=True):
        for status in ("active", "delivered"):  # the state table's way (a trigger refuses others)
            pg_conn.execute("UPDATE recipients SET status = %s WHERE idx = 0", (status,))
        pg_conn.execute("ANALYZE recipients")
        plan = pg_plan(pg_conn, QUERIES.relayed_to, RELAYED_TO)
    assert "Seq Scan" not in plan and "Bitmap Heap Scan on messages" not in plan, plan
    assert "recipients_search_address" in plan or "messages_search_sender" in plan, plan
