"""Maildir as a user runs it: `msgspool serve` with a maildir transport in msgspool.toml takes mail
over SMTP and writes it where Python's `mailbox.Maildir` reads it, with a new_mail event on the SSE
stream; `msgspool mailbox export` writes what the store holds as a Maildir, once."""

from __future__ import annotations

import mailbox
import smtplib
import time
from pathlib import Path

from tests.support.daemon import Daemon, Spool, port_open
from tests.support.sse import SseClient


def wait_for_files(directory: Path, count: int, timeout: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(directory.glob("*")) if directory.is_dir() else []
        if len(files) >= count:
            return files
        time.sleep(0.05)
    raise AssertionError(f"{directory}: {count} files expected")


def send(daemon: Daemon, sender: str, recipients: list[str], subject: str) -> None:
    body = f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as client:
        client.sendmail(sender, recipients, body)


def test_serve_delivers_smtp_mail_into_a_maildir_that_mailbox_reads_with_a_new_mail_event(
        tmp_path: Path, spool: Spool, daemon: Daemon) -> None:
    root = tmp_path / "mail"
    (spool.data / "msgspool.toml").write_text(
        f'local_domains = ["localhost"]\n\n[[transports]]\nname = "maildir"\ntype = "maildir"\n'
        f'path = "{root}/%d/%u"\ndomains = ["example.org"]\n')
    daemon.start()
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", daemon.http_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    events = SseClient(daemon.http_port, "types=new_mail").opened()
    try:
        send(daemon, "sender@example.net", ["alice@example.org", "bob@example.org"], "via smtp")
        files = wait_for_files(root / "example.org" / "alice" / "new", 1)
        wait_for_files(root / "example.org" / "bob" / "new", 1)
        seen = events.wait_for(2)
    finally:
        events.close()
    box = mailbox.Maildir(root / "example.org" / "alice", create=False)
    [message] = list(box)
    assert message["Subject"] == "via smtp" and message["Delivered-To"] == "alice@example.org"
    assert message["Return-Path"] == "<sender@example.net>"
    assert files[0].name.endswith(f",S={files[0].stat().st_size}")
    assert sorted(e.data["mailbox"] for e in seen) == ["alice@example.org", "bob@example.org"]
    assert {e.data["folder"] for e in seen} == {"inbox"}
    [queued] = [m for m in spool.queue() if m["sender"] == "sender@example.net"] or [None]
    info = spool.show(seen[0].data["message_id"])
    assert {(r["transport"], r["status"]) for r in info["recipients"]} == {("maildir", "delivered")}
    assert queued is None  # done: in Sent Items, not the outbox


def test_mailbox_export_writes_the_stored_mail_as_a_maildir_once_and_refuses_an_unknown_mailbox(
        tmp_path: Path, spool: Spool, daemon: Daemon) -> None:
    daemon.start()
    send(daemon, "sender@example.net", ["carol@localhost"], "first")
    send(daemon, "sender@example.net", ["carol@localhost"], "second")
    deadline = time.monotonic() + 15
    while len(spool.run("queue", "list", "--json").stdout.splitlines()) and time.monotonic() < deadline:
        time.sleep(0.05)
    target = tmp_path / "export" / "carol"
    first = spool.run("mailbox", "export", "carol@localhost", str(target))
    assert first.stdout.startswith("2 messages exported") and "0 there already" in first.stdout
    box = mailbox.Maildir(target, create=False)
    assert sorted(m["Subject"] for m in box) == ["first", "second"]
    assert all(m["Delivered-To"] == "carol@localhost" for m in box)
    # a reader moves one to cur/ and flags it; a second export adds nothing
    key, message = next(iter(box.items()))
    message.set_subdir("cur")
    message.add_flag("S")
    box[key] = message
    again = spool.run("mailbox", "export", "carol@localhost", str(target))
    assert again.stdout.startswith("0 messages exported") and "2 there already" in again.stdout
    assert len(mailbox.Maildir(target, create=False)) == 2
    unknown = spool.run("mailbox", "export", "nobody@localhost", str(tmp_path / "x"), ok=False)
    assert unknown.returncode == 1 and "no mailbox nobody@localhost" in unknown.stderr
    assert not (tmp_path / "x").exists()
