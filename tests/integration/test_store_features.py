"""Store features as a client sees them through the spooler (receive folders by message class,
delete-after-submit), providers found by entry point, and the SQLite store's schema upgrades. What
every store must do, tested through the Store's own API, is in tests/contract/."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SpoolerFactory
from tests.integration.test_relay import submission, wait_status
from tests.support.sink import Sink

NOTE = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"


async def test_inbound_message_is_filed_by_its_message_class(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(local_domains=["example.org"]) as spooler:
        await spooler.set_receive_folder("Bob@example.org", "IPM.Note.Alert", "alerts")
        await spooler.send(NOTE, sender="a@example.org", recipients=["bob@example.org"],
                           message_class="IPM.Note.Alert.Disk")
        await spooler.send(NOTE, sender="a@example.org", recipients=["bob@example.org"])
        alerts = await spooler.folder("bob@example.org", "alerts")
        inbox = await spooler.folder("bob@example.org", "inbox")
        content = await spooler.content(inbox[0]["id"])
    assert [m["message_class"] for m in alerts] == ["IPM.Note.Alert.Disk"]
    assert [m["message_class"] for m in inbox] == ["IPM.Note"]
    assert content.startswith(b"Return-Path: <a@example.org>\r\nDelivered-To: bob@example.org\r\n")


async def test_finished_message_moves_to_sent_or_is_deleted_when_asked(spooler_factory: SpoolerFactory,
                                                                       sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        kept = await spooler.submit(submission("b@example.com"))
        gone = await spooler.submit(submission("c@example.com", delete_after_submit=True))
        await wait_status(spooler, kept, {"delivered"})
        await sink.async_wait_for(2)
        for _ in range(100):
            if await spooler.store.get(gone) is None:
                break
            await asyncio.sleep(0.02)
        sent = await spooler.store.list_messages(("sent", "outbox"), "", 10)
    assert [(m.id, m.folder) for m in sent] == [(kept, "sent")]


@pytest.fixture
def third_party_transport(tmp_path: Path) -> Iterator[None]:
    """An installed distribution that registers a transport, as a third party's package would."""
    (tmp_path / "echo_transport.py").write_text(textwrap.dedent('''
        from msgspool.domain.outcome import Reply

        DELIVERED = []

        class EchoConnection:
            remote = "echo"
            usable = True
            async def send(self, message, recipients):
                DELIVERED.extend(r.address for r in recipients)
                return [Reply(250, "2.0.0", "echoed") for _ in recipients]
            async def close(self):
                pass

        class EchoTransport:
            addrtypes = frozenset({"ECHO"})
            domains = ()
            def __init__(self, name, settings, options):
                self.name = name
            def nexthop(self, address):
                return "echo"
            async def connect(self, nexthop):
                return EchoConnection()
            async def close(self):
                pass
    '''))
    dist = tmp_path / "echo_transport-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-transport\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[msgspool.transports]\necho = echo_transport:EchoTransport\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("echo_transport", None)


async def test_a_third_party_transport_is_found_by_its_entry_point(spooler_factory: SpoolerFactory,
                                                                   third_party_transport: None) -> None:
    async with spooler_factory(transports=[{"name": "echo", "type": "echo"}]) as spooler:
        message_id = await spooler.submit(submission("anyone", addrtypes=["ECHO"]))
        info = await wait_status(spooler, message_id, {"delivered"})
    import echo_transport  # type: ignore[import-not-found]

    assert echo_transport.DELIVERED == ["anyone"]
    assert info["recipients"][0]["transport"] == "echo"
    assert info["recipients"][0]["last_reply"] == "250 2.0.0 echoed"


async def test_an_unknown_store_is_a_configuration_error(tmp_path: Path) -> None:
    from msgspool.config import ConfigError
    from msgspool.spooler.runtime import Spooler
    from tests.conftest import make_settings

    with pytest.raises(ConfigError, match="unknown store 'nosuch'"):
        Spooler(make_settings(tmp_path, store="nosuch"))


async def test_a_spool_made_by_an_older_msgspool_is_upgraded_on_open(tmp_path: Path) -> None:
    """Version 1 spools lack the DSN, report and delay-notice columns and three indexes; opening adds them."""
    import sqlite3

    from msgspool.stores.sqlite import SCHEMA_VERSION, SQLiteStore, connect, create_schema

    path = tmp_path / "spool.db"
    conn = connect(path)
    create_schema(conn)
    for table, column in (("recipients", "notify"), ("recipients", "orcpt"), ("messages", "ret"),
                          ("messages", "envid")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DROP INDEX recipients_report")
    conn.execute("ALTER TABLE recipients DROP COLUMN report")
    conn.execute("DROP INDEX events_by_time")
    conn.execute("DROP INDEX recipients_warn")
    conn.execute("ALTER TABLE recipients DROP COLUMN warn_at")
    conn.execute("PRAGMA user_version = 1")
    conn.close()

    store = SQLiteStore(path)
    await store.open()
    await store.close()
    check = sqlite3.connect(path)
    columns = {t: {row[1] for row in check.execute(f"PRAGMA table_info({t})")} for t in ("recipients", "messages")}
    indexes = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    version = check.execute("PRAGMA user_version").fetchone()[0]
    check.close()
    assert {"notify", "orcpt", "report", "warn_at"} <= columns["recipients"]
    assert {"ret", "envid"} <= columns["messages"]
    assert {"recipients_report", "events_by_time", "recipients_warn"} <= indexes
    assert version == SCHEMA_VERSION


async def test_a_version_4_spool_gets_read_flags_and_receipts_on_open(tmp_path: Path) -> None:
    """Version 5 adds the read flag and the read receipt answered; mail the spool submitted counts as read."""
    import sqlite3

    from msgspool.stores.sqlite import SCHEMA_VERSION, SQLiteStore, connect, create_schema

    path = tmp_path / "spool.db"
    conn = connect(path)
    create_schema(conn)
    for column in ("mdn", "read"):
        conn.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    conn.execute("INSERT INTO messages (id, mailbox, folder, sender, size, submitted_at, content_id) VALUES"
                 " ('sent1', '', 'sent', 'a@example.org', 1, 0, 1), ('in1', 'b@example.org', 'inbox', '', 1, 0, 1)")
    conn.execute("PRAGMA user_version = 4")
    conn.close()

    store = SQLiteStore(path)
    await store.open()
    sent, filed = await store.get("sent1"), await store.get("in1")
    await store.close()
    check = sqlite3.connect(path)
    version = check.execute("PRAGMA user_version").fetchone()[0]
    check.close()
    assert sent is not None and filed is not None
    assert (sent.read, sent.mdn, filed.read, filed.mdn) == (True, None, False, None)
    assert version == SCHEMA_VERSION


async def test_a_version_4_spool_gets_priority_classes_and_the_claim_index(tmp_path: Path) -> None:
    """Version 4 claimed by time alone (index recipients_due); opening moves a spool to version 5:
    recipients carry their message's priority class, claims use (priority, next_attempt_at)."""
    import sqlite3

    from msgspool.stores.ops import op_claim
    from msgspool.stores.sqlite import SCHEMA_VERSION, connect, create_schema

    path = tmp_path / "spool.db"
    conn = connect(path)
    create_schema(conn)
    conn.execute("DROP INDEX recipients_due_by_priority")
    conn.execute("ALTER TABLE recipients DROP COLUMN priority")
    conn.execute("ALTER TABLE messages DROP COLUMN max_attempts")
    conn.execute("CREATE INDEX recipients_due ON recipients (next_attempt_at) WHERE status IN ('queued', 'deferred')")
    conn.execute("INSERT INTO contents (id, data) VALUES (1, x'00')")
    for mid, priority, due in (("normal", 0, 1.0), ("urgent", 1, 2.0)):
        conn.execute("INSERT INTO messages (id, folder, sender, size, submitted_at, content_id, priority)"
                     " VALUES (?, 'outbox', 'a@example.org', 1, 0, 1, ?)", (mid, priority))
        conn.execute("INSERT INTO recipients (message_id, idx, address, addrtype, type, status, next_attempt_at)"
                     " VALUES (?, 0, 'b@example.com', 'SMTP', 'to', 'deferred', ?)", (mid, due))
    conn.execute("PRAGMA user_version = 4")
    conn.close()

    conn = connect(path)
    create_schema(conn)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    classes = dict(conn.execute("SELECT message_id, priority FROM recipients").fetchall())
    claimed = [m.id for m in op_claim(conn, 10.0, 1)]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert "recipients_due_by_priority" in indexes and "recipients_due" not in indexes
    assert classes == {"normal": 0, "urgent": 1}
    assert claimed == ["urgent"]  # though due later than the normal one
    assert version == SCHEMA_VERSION
    assert sqlite3.connect(path).execute("SELECT max_attempts FROM messages").fetchall() == [(None,), (None,)]
