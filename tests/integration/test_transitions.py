"""The recipient state table is enforced by the store (issue 11.1): a change the domain's table
(domain/recipient.py TRANSITIONS) does not allow is refused on every write path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from msgspool.domain.recipient import TRANSITIONS, Status
from msgspool.stores.sqlite import connect, create_schema


def spool_with(tmp_path: Path, status: Status) -> sqlite3.Connection:
    conn = connect(tmp_path / "spool.db")
    create_schema(conn)
    conn.execute("INSERT INTO contents (id, data) VALUES (1, x'00')")
    conn.execute("INSERT INTO messages (id, mailbox, folder, sender, size, submitted_at, content_id)"
                 " VALUES ('m', '', 'outbox', 'a@example.org', 1, 0, 1)")
    conn.execute("INSERT INTO recipients (message_id, idx, address, addrtype, type, status)"
                 " VALUES ('m', 0, 'b@example.com', 'SMTP', 'to', ?)", (str(status),))
    return conn


@pytest.mark.parametrize("old", list(Status))
@pytest.mark.parametrize("new", list(Status))
def test_the_store_takes_exactly_the_state_changes_of_the_table(tmp_path: Path, old: Status, new: Status) -> None:
    conn = spool_with(tmp_path, old)
    change = "UPDATE recipients SET status = ? WHERE message_id = 'm'"
    if new == old or new in TRANSITIONS[old]:
        conn.execute(change, (str(new),))
        assert conn.execute("SELECT status FROM recipients").fetchone()[0] == new
    else:
        with pytest.raises(sqlite3.IntegrityError, match="recipient state change not allowed"):
            conn.execute(change, (str(new),))
        assert conn.execute("SELECT status FROM recipients").fetchone()[0] == old
    conn.close()
