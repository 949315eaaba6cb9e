"""POP3 fetch (spooler/fetch.py, transports/pop3.py) against Debian's Dovecot: messages in a Dovecot
user's maildrop are filed once into the local mailbox, deleted there only after the commit (or kept,
with ``after = "keep"``), never filed twice however often the account is polled; a wrong password is
a failure state with a clear log line, and the other accounts go on."""

from __future__ import annotations

import asyncio
import logging
import poplib
from pathlib import Path
from typing import Any

import pytest

from msgspool.domain.events import EventType
from msgspool.errors import ConfigError, FetchError, LoginRefused
from msgspool.spooler.fetch import Fetcher, build_service
from msgspool.spooler.runtime import Spooler
from tests.conftest import DOVECOT_USERS, SpoolerFactory
from tests.support import dovecot

MAILBOX = "alice@localhost"


def message(subject: str, body: str = "hello") -> bytes:
    return (f"From: Sender <sender@example.net>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.net>\r\n\r\n{body}\r\n").encode()


def account(server: dovecot.Dovecot, tmp_path: Path, user: str = "alice", password: str | None = None,
            **kw: Any) -> dict[str, Any]:
    secret = tmp_path / f"{user}-{kw.get('name', 'work')}.password"
    secret.write_text((password if password is not None else DOVECOT_USERS[user]) + "\n")
    return {"name": "work", "protocol": "pop3", "host": "127.0.0.1", "port": server.pop3_port, "security": "none",
            "user": user, "password_file": str(secret), "mailbox": MAILBOX, **kw}


def on_server(server: dovecot.Dovecot, user: str = "alice") -> int:
    pop = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    try:
        pop.user(user)
        pop.pass_(DOVECOT_USERS[user])
        return int(pop.stat()[0])
    finally:
        pop.quit()


async def subjects(spooler: Spooler, mailbox: str = MAILBOX) -> list[str]:
    found = []
    for info in await spooler.folder(mailbox):
        content = await spooler.content(info["id"])
        found += [line.split(b":", 1)[1].strip().decode() for line in content.split(b"\r\n")
                  if line.startswith(b"Subject:")]
    return sorted(found)


def fetcher(spooler: Spooler, name: str = "work") -> Fetcher:
    service = build_service(spooler, spooler.settings)
    return next(f for f in service.fetchers if f.account.name == name)


async def test_messages_are_filed_once_and_deleted_on_the_server_after_the_commit(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("first"))
    dovecot_server.deliver("alice", message("second", ".a line with a leading dot"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path)]) as spooler:
        events = spooler.events(types=[EventType.NEW_MAIL])
        f = fetcher(spooler)
        assert await f.once() == 2
        assert await subjects(spooler) == ["first", "second"]
        assert on_server(dovecot_server) == 0  # DELE, then QUIT: gone from the maildrop
        assert await f.once() == 0  # nothing new, nothing twice
        assert await subjects(spooler) == ["first", "second"]
        [info] = [i for i in await spooler.folder(MAILBOX) if b".a line" in await spooler.content(i["id"])]
        content = await spooler.content(info["id"])
        assert b"\r\n.a line with a leading dot\r\n" in content  # unstuffed (RFC 1939 §3)
        assert content.startswith(b"Return-Path: <sender@example.org>\r\nDelivered-To: alice@localhost\r\n")
        assert b"Received: from 127.0.0.1 by mx.test with POP3 id " in content
        got = [await asyncio.wait_for(events.__anext__(), 5) for _ in range(2)]
        assert {(e.mailbox, e.folder) for e in got} == {(MAILBOX, "inbox")}
        assert f.row()["fetched"] == 2 and f.row()["status"] == "online"
        assert await spooler.store.fetched_uids("work") == set()  # gone from the server: forgotten


async def test_a_message_committed_but_not_deleted_is_deleted_later_and_not_filed_again(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    """The crash window: the message is in the spool, the DELE never happened (here: the first poll
    kept it). The next poll with delete finds its UIDL recorded, deletes it and files nothing."""
    dovecot_server.deliver("alice", message("once"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="keep")]) as spooler:
        assert await fetcher(spooler).once() == 1
        assert await fetcher(spooler).once() == 0
        assert on_server(dovecot_server) == 1
        assert len(await spooler.store.fetched_uids("work")) == 1
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="delete")]) as spooler:
        assert await fetcher(spooler).once() == 0
        assert on_server(dovecot_server) == 0
        assert await subjects(spooler) == ["once"]


async def test_keep_leaves_the_mail_and_fetches_only_what_is_new(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    dovecot_server.deliver("alice", message("old"))
    async with spooler_factory(fetch=[account(dovecot_server, tmp_path, after="keep")]) as spooler:
        f = fetcher(spooler)
        assert await f.once() == 1
        dovecot_server.deliver("alice", message("new"))
        assert await f.once() == 1
        assert await f.once() == 0
        assert on_server(dovecot_server) == 2
        assert await subjects(spooler) == ["new", "old"]


async def test_a_wrong_password_is_a_failure_with_a_log_line_and_the_other_account_goes_on(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    dovecot_server.deliver("bob", message("for bob"))
    wrong = "not-alices-password"
    accounts = [account(dovecot_server, tmp_path, password=wrong, interval=0.2),
                account(dovecot_server, tmp_path, user="bob", name="bobs", mailbox="bob@localhost", interval=0.2)]
    caplog.set_level(logging.INFO, logger="msgspool.fetch")
    async with spooler_factory(fetch=accounts) as spooler:
        news = spooler.events(types=[EventType.TRANSPORT_STATUS])
        service = build_service(spooler, spooler.settings)
        spooler.fetch = service
        spooler.watch_status(interval=60)  # as serve does; an account's change makes it look at once
        await asyncio.sleep(0.5)  # its first look: what all rows are before the accounts start
        with pytest.raises(LoginRefused, match="refused the login of alice"):
            await service.fetchers[0].once()
        service.start()
        try:
            for _ in range(400):
                rows = {r["name"]: r for r in spooler.status()["fetch"]}
                if rows["bobs"]["fetched"] == 1 and service.fetchers[0].failures >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await service.stop()
        assert rows["work"]["status"] == "failure" and "refused the login of alice" in rows["work"]["reason"]
        assert rows["bobs"]["status"] == "online" and rows["bobs"]["fetched"] == 1
        assert await subjects(spooler, "bob@localhost") == ["for bob"]
        told = [await asyncio.wait_for(news.__anext__(), 5) for _ in range(2)]
        assert {(e.detail["kind"], e.detail["name"], e.detail["status"]) for e in told} == {
            ("fetch", "work", "failure"), ("fetch", "bobs", "online")}
        assert all(e.id for e in told)  # recorded: a client resuming by event id sees them too
    lines = [r.getMessage() for r in caplog.records]
    assert any("fetch work: status=failure login refused" in line for line in lines)
    assert not any(wrong in line for line in lines)
    assert wrong not in str(rows)


async def test_a_mailbox_outside_the_local_domains_or_an_unreadable_password_stops_serve(
        spooler_factory: SpoolerFactory, tmp_path: Path) -> None:
    table = {"name": "work", "protocol": "pop3", "host": "127.0.0.1", "port": 110, "security": "none",
             "user": "alice", "password_file": str(tmp_path / "missing"), "mailbox": MAILBOX}
    async with spooler_factory(fetch=[table]) as spooler:
        with pytest.raises(ConfigError, match="fetch work: cannot use the password file"):
            build_service(spooler, spooler.settings)
    async with spooler_factory(fetch=[{**table, "mailbox": "alice@example.com"}]) as spooler:
        with pytest.raises(ConfigError, match="not in a local domain"):
            build_service(spooler, spooler.settings)


async def test_a_server_that_does_not_answer_is_a_failure(spooler_factory: SpoolerFactory, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    table = {"name": "work", "protocol": "pop3", "host": "127.0.0.1", "port": dovecot.free_port(),
             "security": "none", "user": "alice", "password_file": str(secret), "mailbox": MAILBOX}
    async with spooler_factory(fetch=[table]) as spooler:
        f = fetcher(spooler)
        with pytest.raises(FetchError, match=r"cannot connect to 127\.0\.0\.1"):
            await f.once()
        assert f.row()["status"] == "failure"
