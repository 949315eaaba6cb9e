"""Maildir delivery (transports/maildir.py) into real directories, read back with Python's
`mailbox.Maildir`: the inbox, Maildir++ folders for receive folders, new_mail events, the replies
of a full disk and a read-only file system (deferred, and delivered once the disk has room)."""

from __future__ import annotations

import asyncio
import imaplib
import mailbox
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import msgspool
from msgspool import EventType
from msgspool.domain.dsn import OriginalRecipient, RecipientDSN
from msgspool.maildir_export import UnknownMailbox, export_mailbox
from msgspool.spooler.runtime import Spooler
from tests.conftest import DOVECOT_USERS
from tests.support import dovecot
from tests.support.tmpfs import fill, small_tmpfs

NOTE = b"From: a@example.com\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nbody line\r\n"


def maildir_transport(root: Path, **options: Any) -> dict[str, Any]:
    return {"name": "maildir", "type": "maildir", "path": f"{root}/%d/%u", "domains": ["example.org"], **options}


def spool(tmp_path: Path, root: Path, **options: Any) -> Any:
    return msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="", hostname="mx.test",
                               delivery_process=False, local_domains=["localhost"],
                               transports=[maildir_transport(root, **options)])


async def delivered(spooler: Spooler, queue_id: str, timeout: float = 10.0,
                    wanted: tuple[str, ...] = ("delivered", "deferred", "failed")) -> dict[str, Any]:
    """The message once every recipient's status is one of `wanted` (by default: attempted)."""
    for _ in range(int(timeout / 0.05)):
        info = await spooler.message(queue_id)
        if all(r["status"] in wanted for r in info["recipients"]):
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue_id}: {info['recipients']}")


async def test_a_local_recipient_of_a_maildir_domain_is_written_into_new_and_mailbox_reads_it(
        tmp_path: Path) -> None:
    root = tmp_path / "mail"
    async with spool(tmp_path, root) as spooler:
        events = spooler.events(types=[EventType.NEW_MAIL])
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["Alice@example.org"])
        info = await delivered(spooler, queue_id)
        event = await asyncio.wait_for(anext(events), 5)
    recipient = info["recipients"][0]
    assert (recipient["status"], recipient["transport"]) == ("delivered", "maildir")
    assert recipient["last_reply"].startswith("250 2.0.0 delivered to maildir")
    box = mailbox.Maildir(root / "example.org" / "alice", create=False)
    [(key, message)] = list(box.items())
    assert message["Subject"] == "hello" and message.get_payload() == "body line\n"
    assert message["Return-Path"] == "<a@example.com>" and message["Delivered-To"] == "Alice@example.org"
    assert message.get_subdir() == "new" and message.get_flags() == ""
    files = os.listdir(root / "example.org" / "alice" / "new")
    assert files == [key]
    size = (root / "example.org" / "alice" / "new" / key).stat().st_size
    assert key.endswith(f".mx.test,S={size}") and f"P{os.getpid()}Q" in key
    assert os.listdir(root / "example.org" / "alice" / "tmp") == []
    assert b"\r\n" not in (root / "example.org" / "alice" / "new" / key).read_bytes()
    assert (event.mailbox, event.folder, event.message_id) == ("alice@example.org", "inbox", queue_id)
    assert event.detail["location"] == str(root / "example.org" / "alice" / "new" / key)


async def test_a_receive_folder_is_a_maildirplus_folder_that_mailbox_lists(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    async with spool(tmp_path, root) as spooler:
        await spooler.set_receive_folder("bob@example.org", "IPM.Note.Report", "Reports/Bounces")
        events = spooler.events(types=[EventType.NEW_MAIL])
        first = await spooler.send(NOTE, sender="a@example.com", recipients=["bob@example.org"],
                                   message_class="IPM.Note.Report.DR")
        second = await spooler.send(NOTE, sender="a@example.com", recipients=["bob@example.org"])
        await delivered(spooler, first)
        await delivered(spooler, second)
        seen = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
    box = mailbox.Maildir(root / "example.org" / "bob", create=False)
    assert box.list_folders() == ["Reports.Bounces"]
    assert len(box) == 1 and len(box.get_folder("Reports.Bounces")) == 1
    assert (root / "example.org" / "bob" / ".Reports.Bounces" / "maildirfolder").is_file()
    assert (root / "example.org" / "bob" / "subscriptions").read_text() == "Reports.Bounces\n"
    assert sorted(e.folder for e in seen) == ["Reports/Bounces", "inbox"]


async def test_a_mailbox_route_sends_one_address_to_a_maildir_and_its_domain_stays_in_the_store(
        tmp_path: Path) -> None:
    root = tmp_path / "mail"
    transport = {"name": "maildir", "type": "maildir", "path": f"{root}/%m", "domains": ["carol@localhost"]}
    async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="",
                                   delivery_process=False, transports=[transport]) as spooler:
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["carol@localhost", "dave@localhost"])
        info = await delivered(spooler, queue_id)
        stored = await spooler.folder("dave@localhost")
    by_address = {r["address"]: r for r in info["recipients"]}
    assert by_address["carol@localhost"]["transport"] == "maildir"
    assert by_address["dave@localhost"]["transport"] == "local"
    assert len(mailbox.Maildir(root / "carol@localhost", create=False)) == 1
    assert len(stored) == 1


async def test_without_create_a_missing_maildir_is_an_unknown_mailbox(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    (root / "example.org").mkdir(parents=True)
    mailbox.Maildir(root / "example.org" / "alice", create=True)
    async with spool(tmp_path, root, create=False) as spooler:
        queue_id = await spooler.send(NOTE, sender="", recipients=["alice@example.org", "nobody@example.org"])
        info = await delivered(spooler, queue_id)
    by_address = {r["address"]: r for r in info["recipients"]}
    assert by_address["alice@example.org"]["status"] == "delivered"
    assert by_address["nobody@example.org"]["status"] == "failed"
    assert by_address["nobody@example.org"]["last_reply"].startswith("550 5.1.1 ")
    assert not (root / "example.org" / "nobody").exists()


async def test_a_local_part_that_would_climb_out_of_the_path_fails_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    async with spool(tmp_path, root) as spooler:
        queue_id = await spooler.send(NOTE, sender="", recipients=['"../../evil"@example.org'])
        info = await delivered(spooler, queue_id)
    assert info["recipients"][0]["last_reply"].startswith("550 5.1.3 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]


async def test_a_message_already_delivered_to_the_address_is_a_loop(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    looped = b"Delivered-To: alice@example.org\r\n" + NOTE
    async with spool(tmp_path, root) as spooler:
        queue_id = await spooler.send(looped, sender="", recipients=["alice@example.org"])
        info = await delivered(spooler, queue_id)
    assert info["recipients"][0]["last_reply"].startswith("554 5.4.6 ")


async def test_a_full_disk_defers_the_recipient_and_a_flush_delivers_it_once_there_is_room(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        root = disk / "mail"
        async with spool(tmp_path, root) as spooler:
            (root / "example.org").mkdir(parents=True)
            mailbox.Maildir(root / "example.org" / "alice", create=True)
            ballast = disk / "ballast"
            fill(ballast)
            queue_id = await spooler.send(NOTE + b"x" * 8192 + b"\r\n", sender="a@example.com",
                                          recipients=["alice@example.org"])
            info = await delivered(spooler, queue_id)
            recipient = info["recipients"][0]
            assert recipient["status"] == "deferred"
            assert recipient["last_reply"].startswith("452 4.3.1 maildir ")
            assert os.listdir(root / "example.org" / "alice" / "tmp") == []
            assert os.listdir(root / "example.org" / "alice" / "new") == []
            ballast.unlink()
            await spooler.flush([queue_id])
            info = await delivered(spooler, queue_id, wanted=("delivered",))
        assert info["recipients"][0]["status"] == "delivered"
        assert len(mailbox.Maildir(root / "example.org" / "alice", create=False)) == 1


async def test_a_read_only_file_system_defers_the_recipient(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        root = disk / "mail"
        async with spool(tmp_path, root) as spooler:
            (root / "example.org").mkdir(parents=True)
            mailbox.Maildir(root / "example.org" / "alice", create=True)
            remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True,
                                     check=False)
            if remount.returncode != 0:
                reason = f"cannot remount read-only: {remount.stderr.strip()}"
                if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                    pytest.fail(f"{reason}; under CI=true the read-only test must run")
                pytest.skip(reason)
            queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["alice@example.org"])
            info = await delivered(spooler, queue_id)
        recipient = info["recipients"][0]
        assert recipient["status"] == "deferred"
        assert recipient["last_reply"].startswith("451 4.3.0 maildir ") and "read-only" in recipient["last_reply"]


async def test_dovecot_reads_the_maildir_inbox_and_its_maildirplus_folders_over_imap(
        tmp_path: Path, dovecot_server: dovecot.Dovecot) -> None:
    owner = "nobody" if os.getuid() == 0 else os.getuid()  # the mail user of the test Dovecot
    transport = {"name": "maildir", "type": "maildir", "path": f"{dovecot_server.directory}/home/%u/Maildir",
                 "domains": ["example.org"], "owner": owner}
    async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="", delivery_process=False,
                                   transports=[transport]) as spooler:
        await spooler.set_receive_folder("alice@example.org", "IPM.Note.Report", "Reports/Bounces")
        await spooler.set_receive_folder("alice@example.org", "IPM.Note.Draft", "Entwürfe")
        for message_class in ("IPM.Note", "IPM.Note.Report.DR", "IPM.Note.Draft"):
            queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["alice@example.org"],
                                          message_class=message_class)
            info = await delivered(spooler, queue_id)
            assert info["recipients"][0]["status"] == "delivered", info["recipients"]
    imap = await asyncio.to_thread(imaplib.IMAP4, "127.0.0.1", dovecot_server.imap_port, timeout=10)
    try:
        imap.login("alice", DOVECOT_USERS["alice"])
        listed = b" ".join(line for line in imap.list()[1] if isinstance(line, bytes))
        subscribed = b" ".join(line for line in imap.lsub()[1] if isinstance(line, bytes))
        counts = {name: imap.select(name, readonly=True)[1][0] for name in
                  ("INBOX", "Reports.Bounces", '"Entw&APw-rfe"')}
        imap.select("INBOX", readonly=True)
        fetched = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT DELIVERED-TO)])")[1][0]
    finally:
        imap.logout()
    assert b"Reports.Bounces" in listed and b"Entw&APw-rfe" in listed
    assert b"Reports.Bounces" in subscribed
    assert counts == {"INBOX": b"1", "Reports.Bounces": b"1", '"Entw&APw-rfe"': b"1"}
    assert isinstance(fetched, tuple) and b"Subject: hello" in fetched[1]
    assert b"Delivered-To: alice@example.org" in fetched[1]


async def test_export_writes_every_folder_with_read_flags_and_a_second_export_writes_nothing(
        tmp_path: Path) -> None:
    target = tmp_path / "export"
    async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="",
                                   delivery_process=False, hostname="mx.test") as spooler:
        await spooler.set_receive_folder("erin@localhost", "IPM.Note.Report", "Reports")
        for message_class in ("IPM.Note", "IPM.Note", "IPM.Note.Report.NDR"):
            await spooler.send(NOTE, sender="a@example.com", recipients=["erin@localhost"],
                               message_class=message_class)
        await spooler.send(NOTE, sender="erin@localhost", recipients=["erin@localhost"], mailbox="erin@localhost")
        inbox = await spooler.folder("erin@localhost")
        await spooler.mark_read([inbox[0]["id"]], mdn=False)
        for _ in range(100):
            if await spooler.folder("erin@localhost", "sent"):
                break
            await asyncio.sleep(0.05)
        first = await export_mailbox(spooler.store, "Erin@localhost", target, "mx.test")
        second = await export_mailbox(spooler.store, "erin@localhost", target, "mx.test")
        with pytest.raises(UnknownMailbox):
            await export_mailbox(spooler.store, "nobody@localhost", tmp_path / "none", "mx.test")
    assert first.written == {"INBOX": 3, "Reports": 1, "Sent": 1} and first.skipped == 0
    assert second.written == {"INBOX": 0, "Reports": 0, "Sent": 0} and second.skipped == 5
    box = mailbox.Maildir(target, create=False)
    assert sorted(box.list_folders()) == ["Reports", "Sent"]
    assert len(box) == 3 and len(box.get_folder("Reports")) == 1 and len(box.get_folder("Sent")) == 1
    by_subdir = sorted((m.get_subdir(), m.get_flags()) for m in box)
    assert by_subdir == [("cur", "S"), ("new", ""), ("new", "")]
    read = next(m for m in box if m.get_subdir() == "cur")
    assert read["Return-Path"] == "<a@example.com>" and read["Delivered-To"] == "erin@localhost"
    assert all(f".X{info['id']}.mx.test," in "".join(os.listdir(target / "cur") + os.listdir(target / "new"))
               for info in inbox)
    assert not (tmp_path / "none").exists()


async def test_the_maildir_setting_sends_every_local_domain_to_maildirs(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="", delivery_process=False,
                                   local_domains=["localhost", "example.net"], maildir=f"{root}/%d/%u") as spooler:
        queue_id = await spooler.send(NOTE, sender="", recipients=["a@localhost", "b@example.net"])
        info = await delivered(spooler, queue_id)
    assert {r["transport"] for r in info["recipients"]} == {"maildir"}
    assert len(mailbox.Maildir(root / "localhost" / "a", create=False)) == 1
    assert len(mailbox.Maildir(root / "example.net" / "b", create=False)) == 1


SIEVE = [{"name": "filters", "type": "sieve"}]


def sieve_script(spooler: Spooler, mailbox_name: str, text: str) -> None:
    folder = Path(spooler.settings.data_dir) / "sieve"
    folder.mkdir(exist_ok=True)
    (folder / f"{mailbox_name}.sieve").write_text(text)


async def test_inbound_hooks_run_for_maildir_recipients_sieve_files_into_a_folder_with_flags_and_rejects(
        tmp_path: Path) -> None:
    root = tmp_path / "mail"
    async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="", delivery_process=False,
                                   hooks=SIEVE, transports=[maildir_transport(root)]) as spooler:
        sieve_script(spooler, "alice@example.org",
                     'require ["fileinto", "imap4flags", "reject"];\r\n'
                     'if header :contains "subject" "report" { fileinto :flags "\\\\Flagged" "Reports"; }\r\n'
                     'elsif header :contains "subject" "offer" { reject "no offers"; }\r\n')
        events = spooler.events(types=[EventType.NEW_MAIL])
        report = await spooler.send(NOTE.replace(b"hello", b"weekly report"), sender="a@example.com",
                                    recipients=["alice@example.org"])
        plain = await spooler.send(NOTE, sender="a@example.com", recipients=["alice@example.org"])
        offer = await spooler.send(NOTE.replace(b"hello", b"an offer"), sender="a@example.com",
                                   recipients=["alice@example.org"])
        infos = [await delivered(spooler, i) for i in (report, plain, offer)]
        seen = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
    replies = [i["recipients"][0]["last_reply"] for i in infos]
    assert replies[0] == "250 2.0.0 delivered to maildir of alice@example.org (Reports)"
    assert replies[1] == "250 2.0.0 delivered to maildir of alice@example.org (inbox)"
    assert replies[2] == "550 5.7.1 no offers"
    assert all(i["recipients"][0]["transport"] == "maildir" for i in infos)
    box = mailbox.Maildir(root / "example.org" / "alice", create=False)
    [filed] = list(box.get_folder("Reports"))
    assert filed["Subject"] == "weekly report" and filed.get_subdir() == "cur" and filed.get_flags() == "F"
    assert filed["Return-Path"] == "<a@example.com>" and filed["Delivered-To"] == "alice@example.org"
    assert [m["Subject"] for m in box] == ["hello"]
    assert sorted((e.folder, e.message_id) for e in seen) == sorted([("Reports", report), ("inbox", plain)])


async def test_with_inbound_hooks_a_full_disk_still_defers_the_maildir_recipient(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        root = disk / "mail"
        async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="",
                                       delivery_process=False, hooks=SIEVE,
                                       transports=[maildir_transport(root)]) as spooler:
            (root / "example.org").mkdir(parents=True)
            mailbox.Maildir(root / "example.org" / "alice", create=True)
            fill(disk / "ballast")
            queue_id = await spooler.send(NOTE + b"x" * 8192 + b"\r\n", sender="a@example.com",
                                          recipients=["alice@example.org"])
            info = await delivered(spooler, queue_id)
            recipient = info["recipients"][0]
            assert recipient["status"] == "deferred", recipient
            assert recipient["last_reply"].startswith("452 4.3.1 maildir ")
            assert recipient["next_attempt_at"] is not None
            (disk / "ballast").unlink()
            await spooler.flush([queue_id])
            info = await delivered(spooler, queue_id, wanted=("delivered",))
        assert len(mailbox.Maildir(root / "example.org" / "alice", create=False)) == 1


async def test_a_new_directory_swapped_for_a_symlink_defers_and_nothing_is_written_through_it(
        tmp_path: Path) -> None:
    root = tmp_path / "mail"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "example.org").mkdir(parents=True)
    mailbox.Maildir(root / "example.org" / "alice", create=True)
    (root / "example.org" / "alice" / "new").rmdir()
    (root / "example.org" / "alice" / "new").symlink_to(elsewhere)
    async with spool(tmp_path, root) as spooler:
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["alice@example.org"])
        info = await delivered(spooler, queue_id)
    assert info["recipients"][0]["status"] == "deferred"
    assert info["recipients"][0]["last_reply"].startswith("451 4.3.0 maildir ")
    assert list(elsewhere.iterdir()) == [] and os.listdir(root / "example.org" / "alice" / "tmp") == []


async def test_an_orcpt_becomes_original_recipient_in_the_maildir_copy(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    async with spool(tmp_path, root) as spooler:
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["bob@example.org"],
                                      notify=RecipientDSN(orcpt=OriginalRecipient("rfc822", "Bob+news@Example.org")))
        await delivered(spooler, queue_id)
    [message] = list(mailbox.Maildir(root / "example.org" / "bob", create=False))
    assert message["Original-Recipient"] == "rfc822; Bob+news@Example.org"
    assert message.keys()[:3] == ["Return-Path", "Delivered-To", "Original-Recipient"]


@pytest.mark.parametrize("hooks", [[], SIEVE], ids=["plain", "inbound-hooks"])
async def test_an_offline_maildir_transport_writes_nothing_until_it_is_online(tmp_path: Path,
                                                                             hooks: list[Any]) -> None:
    """Issue 12.7 for a mailbox transport, also when inbound hooks route its recipients past the
    destinations (local delivery)."""
    root = tmp_path / "mail"
    async with msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="", delivery_process=False,
                                   hooks=hooks, transports=[maildir_transport(root)]) as spooler:
        await spooler.set_offline("maildir")
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["alice@example.org"])
        info = await delivered(spooler, queue_id)
        recipient = info["recipients"][0]
        assert (recipient["status"], recipient["attempts"], recipient["last_reply"]) == (
            "deferred", 0, "421 4.3.2 transport maildir is offline")
        assert not (root / "example.org" / "alice").exists()
        assert (await spooler.set_offline("maildir", False))["released"] == 1
        await delivered(spooler, queue_id, wanted=("delivered",))
    assert [m["Subject"] for m in mailbox.Maildir(root / "example.org" / "alice", create=False)] == ["hello"]
