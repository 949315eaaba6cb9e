"""Delivery to the file and maildir members of the aliases (transports/file.py, Postfix local(8)'s
delivery to /file and /maildir/): written for real and read back with Python's `mailbox.mbox` and
`mailbox.Maildir`; as root by a child process running as `aliases_user`, so a path that account may
not write is deferred 451 4.2.0; a full disk defers 452 4.3.1 and leaves the file as it was; a
symbolic link fails 554 5.2.0; the mbox locks (fcntl and PATH.lock) are waited for, and a stale
dot-lock is taken over. The write itself (`append_mbox`, `write_maildir`) is also run in this
process, as a daemon that is not root runs it."""

from __future__ import annotations

import asyncio
import mailbox
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import msgspool
from msgspool.domain.mbox import entry
from msgspool.errors import NothingToResend
from msgspool.spooler.runtime import Spooler
from msgspool.transports.file import append_mbox, write_maildir
from tests.support.tmpfs import fill, small_tmpfs

ME = pwd.getpwuid(os.geteuid()).pw_name
NOTE = b"From: a@example.com\r\nTo: archive@localhost\r\nSubject: kept\r\n\r\nFrom the start\r\nbody\r\n"


def spool(tmp_path: Path, aliases: str, **settings: Any) -> Any:
    path = tmp_path / "aliases"
    path.write_text(aliases)
    options: dict[str, Any] = {"aliases_user": ME, **settings}
    return msgspool.open_spool(str(tmp_path / "spool"), smtp_listen="", http_listen="", hostname="mx.test",
                               delivery_process=False, aliases=str(path), **options)


async def settled(spooler: Spooler, queue_id: str, timeout: float = 15.0,
                  wanted: tuple[str, ...] = ("delivered", "deferred", "failed")) -> list[dict[str, Any]]:
    for _ in range(int(timeout / 0.05)):
        info = await spooler.message(queue_id)
        if all(r["status"] in wanted for r in info["recipients"]):
            return list(info["recipients"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue_id}: {info['recipients']}")


async def test_a_maildir_and_an_mbox_member_are_written_and_python_mailbox_reads_them(tmp_path: Path) -> None:
    box, file = tmp_path / "mail" / "archive", tmp_path / "archive.mbox"
    async with spool(tmp_path, f"archive: {box}/, {file}\n") as spooler:
        first = await spooler.send(NOTE, sender="a@example.com", recipients=["archive@localhost"])
        second = await spooler.send(NOTE.replace(b"kept", b"again"), sender="", recipients=["archive@localhost"])
        recipients = await settled(spooler, first) + await settled(spooler, second)
        history = (await spooler.message(first))["history"]
    assert [(r["status"], r["addrtype"], r["transport"]) for r in recipients] == [
        ("delivered", "ALIAS-FILE", "aliases-file")] * 4
    assert recipients[0]["last_reply"].startswith(f"250 2.0.0 delivered to maildir {box}/ as ")
    assert recipients[1]["last_reply"] == f"250 2.0.0 delivered to file {file}"
    assert any(f"{file}: expanded from archive@localhost" in str(line) for line in history), history
    maildir_messages = sorted(mailbox.Maildir(box, create=False), key=lambda m: m["Subject"])
    assert [m["Subject"] for m in maildir_messages] == ["again", "kept"]
    assert maildir_messages[1]["Return-Path"] == "<a@example.com>"
    assert maildir_messages[1]["Delivered-To"] == "archive@localhost"
    assert maildir_messages[1].get_payload() == "From the start\nbody\n"  # a maildir quotes nothing
    assert os.listdir(box / "tmp") == []
    messages = mailbox.mbox(file, create=False).values()
    assert [m["Subject"] for m in messages] == ["kept", "again"]
    assert messages[0].get_from().startswith("a@example.com  ") and messages[1].get_from().startswith("MAILER-DAEMON")
    assert messages[0]["Delivered-To"] == "archive@localhost"
    assert messages[0].get_payload() == ">From the start\nbody\n"
    assert file.stat().st_mode & 0o777 == 0o600 and not Path(f"{file}.lock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="writing as another account needs root")
async def test_as_root_the_write_is_the_aliases_users_and_a_path_it_may_not_write_is_deferred(tmp_path: Path) -> None:
    closed = tmp_path / "root-only"
    closed.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    async with spool(tmp_path, f"archive: {closed}/box/, {closed}/file\n", aliases_user="nobody") as spooler:
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["archive@localhost"])
        recipients = await settled(spooler, queue_id)
    assert [(r["status"], r["last_reply"][:10]) for r in recipients] == [("deferred", "451 4.2.0 ")] * 2, recipients
    assert "permission denied" in recipients[0]["last_reply"] and "permission denied" in recipients[1]["last_reply"]
    assert os.listdir(closed) == []  # root would have written both


async def test_a_full_disk_defers_and_leaves_the_mbox_as_it_was_then_a_flush_delivers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        file = disk / "archive.mbox"
        file.write_bytes(entry("a@example.com", "archive@localhost", NOTE, time.time()))
        before = file.read_bytes()
        async with spool(tmp_path, f"archive: {file}, {disk}/box/\n") as spooler:
            ballast = disk / "ballast"
            fill(ballast, leave=4096)  # room for a little of the message, not all of it
            queue_id = await spooler.send(NOTE + b"x" * 65536 + b"\r\n", sender="a@example.com",
                                          recipients=["archive@localhost"])
            recipients = await settled(spooler, queue_id)
            assert [(r["status"], r["last_reply"][:10]) for r in recipients] == [("deferred", "452 4.3.1 ")] * 2
            assert file.read_bytes() == before  # the part that fitted was cut off again
            assert not (disk / "box" / "new").exists() or os.listdir(disk / "box" / "new") == []
            ballast.unlink()
            await spooler.flush([queue_id])
            recipients = await settled(spooler, queue_id, wanted=("delivered",))
    # (read before the tmpfs went: the checks above and these are inside it)
        assert len(mailbox.mbox(file, create=False)) == 2


async def test_a_symbolic_link_is_refused_and_the_file_it_names_untouched(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "archive.mbox"
    link.symlink_to(target)
    async with spool(tmp_path, f"archive: {link}\n") as spooler:
        queue_id = await spooler.send(NOTE, sender="a@example.com", recipients=["archive@localhost"])
        [recipient] = await settled(spooler, queue_id)
    assert recipient["status"] == "failed"
    assert recipient["last_reply"] == f"554 5.2.0 file {link}: is a symbolic link"
    assert target.read_text() == "root:x:0:0\n"


async def test_a_resend_leaves_out_the_failed_commands_and_files_of_the_aliases_and_says_so(tmp_path: Path) -> None:
    """Only the aliases file may name a command or a file (intake refuses one from anyone else), so a
    resend (MAPI RESEND) of a message whose alias members failed sends to its other failed
    recipients and names the members it left out, each with its alias; with nothing else, it says so."""
    command = tmp_path / "fails.sh"
    command.write_text("#!/bin/sh\nexit 67\n")  # EX_NOUSER: failed, 5.1.1
    command.chmod(0o755)
    link = tmp_path / "archive.mbox"
    link.symlink_to(tmp_path / "elsewhere")  # a symbolic link: failed, 5.2.0
    async with spool(tmp_path, f'tickets: "|{command}", {link}\n') as spooler:
        await spooler.suppress("gone@example.com", "a hard bounce", None)  # fails at once, unsent
        alone = await spooler.send(NOTE, sender="a@example.com", recipients=["tickets@localhost"])
        mixed = await spooler.send(NOTE, sender="a@example.com", recipients=["tickets@localhost", "gone@example.com"])
        assert [r["status"] for r in await settled(spooler, alone)] == ["failed", "failed"]
        assert [r["status"] for r in await settled(spooler, mixed)] == ["failed", "failed", "failed"]
        with pytest.raises(NothingToResend) as nothing:
            await spooler.resend(alone)
        answer = await spooler.resend(mixed)
    assert str(nothing.value) == (f"message {alone}: what failed is '{command}' (of tickets@localhost), '{link}' (of"
                                  " tickets@localhost), which only the aliases file may name; send to the alias"
                                  " again instead")
    assert answer["recipients"] == ["gone@example.com"] and answer["skipped"] == [str(command), str(link)]


def test_append_waits_for_the_fcntl_lock_of_another_process_and_gives_up_with_451(tmp_path: Path) -> None:
    file = tmp_path / "box"
    file.touch(mode=0o600)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\n", str(file), "1.0"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        data = entry("a@example.com", "archive@localhost", NOTE, time.time())
        refused = append_mbox(str(file), data, 0.2)
        assert (refused.code, refused.enhanced) == (451, "4.2.0") and "unable to lock" in refused.text
        started = time.monotonic()
        assert append_mbox(str(file), data, 10.0).ok  # once the holder lets go
        assert time.monotonic() - started > 0.3
    finally:
        holder.wait(10)
    assert len(mailbox.mbox(file, create=False)) == 1 and not Path(f"{file}.lock").exists()


def test_a_dot_lock_is_waited_for_and_one_left_by_a_crash_is_taken_over(tmp_path: Path) -> None:
    file, lock = tmp_path / "box", tmp_path / "box.lock"
    lock.touch()
    data = entry("a@example.com", "archive@localhost", NOTE, time.time())
    refused = append_mbox(str(file), data, 0.2)
    assert (refused.code, refused.enhanced) == (451, "4.2.0") and lock.exists()
    old = time.time() - 600  # older than Postfix's stale_lock_time (500 s)
    os.utime(lock, (old, old))
    assert append_mbox(str(file), data, 0.2).ok
    assert not lock.exists() and len(mailbox.mbox(file, create=False)) == 1


def test_a_file_that_lacks_its_last_line_end_gets_one_before_the_next_message(tmp_path: Path) -> None:
    file = tmp_path / "box"
    file.write_bytes(b"From x  Thu Jan  1 00:00:00 1970\nSubject: one\n\nno line end")
    assert append_mbox(str(file), entry("", "archive@localhost", b"Subject: two\r\n\r\nx\r\n", time.time()), 1.0).ok
    assert [m["Subject"] for m in mailbox.mbox(file, create=False)] == ["one", "two"]


def test_what_is_no_regular_file_is_refused_and_dev_null_takes_the_mail(tmp_path: Path) -> None:
    fifo, executable = tmp_path / "fifo", tmp_path / "script"
    os.mkfifo(fifo)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o700)
    linked = tmp_path / "linked"
    linked.touch()
    os.link(linked, tmp_path / "second-name")
    for path, why in ((fifo, "is not a regular file"), (executable, "has an execute bit set"),
                      (linked, "has more than one hard link")):
        reply = append_mbox(str(path), b"x\n", 1.0)
        assert (reply.code, reply.enhanced, reply.text) == (554, "5.2.0", f"file {path}: {why}")
    assert append_mbox("/dev/null", b"x\n", 1.0).ok
    assert executable.read_text() == "#!/bin/sh\n" and linked.read_bytes() == b""


def test_write_maildir_makes_the_maildir_and_its_parents(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "box"
    reply = write_maildir(root, b"Subject: hi\n\nx\n", "mx.test")
    assert reply.ok, reply
    [message] = mailbox.Maildir(root, create=False).values()
    assert message["Subject"] == "hi"
