"""IMAP fetch (spooler/fetch.py, transports/imap.py) against Debian's Dovecot: each message filed once
into the local mailbox by UIDVALIDITY:UID, then deleted, flagged \\Seen or moved on the server only
after the commit; IDLE wakes the account at once when new mail arrives; a wrong password is a
failure, not a crash."""

from __future__ import annotations

import asyncio
import imaplib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msgspool.errors import LoginRefused
from msgspool.spooler.fetch import build_service
from tests.conftest import DOVECOT_USERS, SpoolerFactory
from tests.integration.test_fetch_pop3 import MAILBOX, fetcher, message, subjects
from tests.support import dovecot


def account(server: dovecot.Dovecot, tmp_path: Path, password: str | None = None, **kw: Any) -> dict[str, Any]:
    secret = tmp_path / "alice.password"
    secret.write_text((password if password is not None else DOVECOT_USERS["alice"]) + "\n")
    return {"name": "work", "protocol": "imap", "host": "127.0.0.1", "port": server.imap_port, "security": "none",
            "user": "alice", "password_file": str(secret), "mailbox": MAILBOX, **kw}


def folder_state(server: dovecot.Dovecot, folder: str = "INBOX") -> list[bytes]:
    """The flags of each message in `folder` as the server has them."""
    imap = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=10)
    try:
        imap.login("alice", DOVECOT_USERS["alice"])
        typ, data = imap.select(folder, readonly=True)
        assert typ == "OK", data
        if int(data[0] or 0) == 0:
            return []
        _typ, flags = imap.fetch("1:*", "(FLAGS)")
        return [f for f in flags if isinstance(f, bytes)]
    finally:
        imap.logout()


async def test_delete_files_each_message_once_and_expunges_it_after_the_commit(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("first"))
    dovecot_server.deliver("alice", message("second"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path)]) as spooler:
        f = fetcher(spooler)
        assert await f.once() == 2
        assert folder_state(dovecot_server) == []
        assert await f.once() == 0
        assert await subjects(spooler) == ["first", "second"]
        [info, _] = await spooler.folder(MAILBOX)
        content = await spooler.content(info["id"])
        assert b"Received: from 127.0.0.1 by mx.test with IMAP id " in content


async def test_flag_leaves_the_messages_read_and_fetches_only_new_ones(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("old"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="flag")]) as spooler:
        f = fetcher(spooler)
        assert await f.once() == 1
        [flags] = folder_state(dovecot_server)
        assert b"\\Seen" in flags
        dovecot_server.deliver("alice", message("new"))
        assert b"\\Seen" not in folder_state(dovecot_server)[1]  # BODY.PEEK: reading sets nothing
        assert await f.once() == 1
        assert await f.once() == 0
        assert all(b"\\Seen" in flags for flags in folder_state(dovecot_server))
        assert await subjects(spooler) == ["new", "old"]


async def test_move_puts_them_into_the_folder_creating_it_and_a_flagged_copy_is_not_filed_twice(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("one"))
    dovecot_server.deliver("alice", message("two"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="flag")]) as spooler:
        assert await fetcher(spooler).once() == 2  # as if the move had not happened before a crash
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="move:Fetched/Done")]) as spooler:
        assert await fetcher(spooler).once() == 0
        assert folder_state(dovecot_server) == []
        assert len(folder_state(dovecot_server, "Fetched.Done")) == 2  # Dovecot's Maildir++ delimiter
        assert deleted_by_sessions(dovecot_server) == 0  # UID MOVE, offered by Dovecot
        assert await subjects(spooler) == ["one", "two"]


async def test_idle_wakes_the_account_when_new_mail_arrives(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("before"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, interval=120)]) as spooler:
        service = build_service(spooler, spooler.settings)
        spooler.fetch = service
        service.start()
        try:
            f = service.fetchers[0]
            for _ in range(400):
                if f.fetched == 1 and f.idling:
                    break
                await asyncio.sleep(0.05)
            assert f.row()["idle"] is True and f.row()["status"] == "online"
            dovecot_server.deliver("alice", message("during idle"))
            for _ in range(400):  # well before the 120 s interval
                if f.fetched == 2:
                    break
                await asyncio.sleep(0.05)
            assert f.fetched == 2
        finally:
            await service.stop()
        assert await subjects(spooler) == ["before", "during idle"]
        assert folder_state(dovecot_server) == []


async def test_a_wrong_password_is_login_refused(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, password="wrong")]) as spooler:
        f = fetcher(spooler)
        with pytest.raises(LoginRefused, match="refused the login of alice"):
            await f.once()
        assert f.row()["status"] == "failure"


@pytest.fixture
def plain_imap() -> Iterator[dovecot.Dovecot]:
    """A Dovecot that offers IMAP4rev1 alone: no MOVE, UIDPLUS or IDLE (it accepts them all the same,
    so only what the client chose to send shows what it read from CAPABILITY)."""
    with dovecot.start(DOVECOT_USERS, config="imap_capability = IMAP4rev1 LITERAL+\n") as server:
        yield server


async def test_without_move_and_uidplus_a_move_is_copy_delete_expunge_and_without_idle_a_poll(
        spooler_factory: SpoolerFactory, plain_imap: dovecot.Dovecot, tmp_path: Path) -> None:
    plain_imap.deliver("alice", message("copied"))
    async with spooler_factory(fetch=[account(plain_imap, tmp_path, after="move:Archive", interval=0.3)]) as spooler:
        service = build_service(spooler, spooler.settings)
        service.start()
        try:
            f = service.fetchers[0]
            for _ in range(400):
                if f.fetched == 1:
                    break
                await asyncio.sleep(0.05)
            plain_imap.deliver("alice", message("polled"))
            for _ in range(400):  # no IDLE: the next poll, an interval later, takes it
                if f.fetched == 2:
                    break
                assert not f.idling
                await asyncio.sleep(0.05)
            assert f.fetched == 2
        finally:
            await service.stop()
        assert await subjects(spooler) == ["copied", "polled"]
    assert folder_state(plain_imap) == []
    assert len(folder_state(plain_imap, "Archive")) == 2
    assert deleted_by_sessions(plain_imap) == 2  # COPY, then \Deleted and EXPUNGE: a MOVE deletes nothing


def deleted_by_sessions(server: dovecot.Dovecot) -> int:
    r"""The messages Dovecot's IMAP sessions of alice flagged \Deleted and expunged (its log's summary)."""
    return sum(int(n) for n in re.findall(r"imap\(alice\).*Logged out .* deleted=(\d+)", server.log()))


async def test_a_message_someone_marked_deleted_is_not_fetched(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("going"))
    dovecot_server.deliver("alice", message("staying"))
    imap = imaplib.IMAP4("127.0.0.1", dovecot_server.imap_port, timeout=10)
    imap.login("alice", DOVECOT_USERS["alice"])
    imap.select("INBOX")
    imap.store("1", "+FLAGS", "(\\Deleted)")  # a client deleted it, not expunged yet
    imap.logout()
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="flag")]) as spooler:
        assert await fetcher(spooler).once() == 1
        assert await subjects(spooler) == ["staying"]


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
async def test_a_message_over_the_size_limit_is_left_on_the_server_and_logged_once(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, protocol: str) -> None:
    dovecot_server.deliver("alice", message("big", "x" * 5000))
    dovecot_server.deliver("alice", message("small"))
    port = dovecot_server.pop3_port if protocol == "pop3" else dovecot_server.imap_port
    table = {**account(dovecot_server, tmp_path), "protocol": protocol, "port": port}
    async with spooler_factory(fetch=[table], message_size_limit=2000) as spooler:
        f = fetcher(spooler)
        assert await f.once() == 1
        assert await f.once() == 0
        assert await subjects(spooler) == ["small"]
    assert len(folder_state(dovecot_server)) == 1  # the big one, still there
    lines = [r.getMessage() for r in caplog.records if "more than message_size_limit" in r.getMessage()]
    assert len(lines) == 1 and "left on the server" in lines[0]


async def test_a_folder_with_a_new_uidvalidity_is_fetched_again_and_the_old_ids_forgotten(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    """RFC 3501 §2.3.1.1: a changed UIDVALIDITY says the UIDs mean other messages now. The folder is
    fetched again, as documented (no Message-ID matching)."""
    imap = imaplib.IMAP4("127.0.0.1", dovecot_server.imap_port, timeout=10)
    imap.login("alice", DOVECOT_USERS["alice"])

    def recreate() -> None:
        imap.delete("Work")
        imap.create("Work")
        time.sleep(1.1)  # Dovecot's UIDVALIDITY is the folder's creation time, in seconds
        imap.append("Work", "", imaplib.Time2Internaldate(time.time()), message("kept"))

    imap.create("Work")
    imap.append("Work", "", imaplib.Time2Internaldate(time.time()), message("kept"))
    try:
        async with spooler_factory(fetch=[account(dovecot_server, tmp_path, folder="Work", after="flag")]) as spooler:
            f = fetcher(spooler)
            assert await f.once() == 1
            [before] = await spooler.store.fetched_uids("work")
            assert await f.once() == 0
            recreate()
            assert await f.once() == 1
            [after] = await spooler.store.fetched_uids("work")
            assert before.split(":")[0] != after.split(":")[0]
            assert await subjects(spooler) == ["kept", "kept"]
    finally:
        imap.logout()
