"""Recipient expansion end to end (issue 12.6; MAPI ExpandRecips): an aliases(5) file named by the
`aliases` setting is expanded at submission over SMTP, HTTP and sendmail — local members filed,
remote ones relayed with the list's owner as the envelope sender and the alias as their ORCPT, a
loop failed with 554 5.4.6 and reported — and read again on SIGHUP; `aliases check` reports a
broken file's lines, and members it may not take stop `serve` with a config error; /maildir/ and
/file members are written, read back with Python's `mailbox`."""

from __future__ import annotations

import json
import mailbox
import os
import pwd
import signal
import smtplib
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, Spool, port_open, post, received_tags, tagged_message
from tests.support.sink import Sink

ME = pwd.getpwuid(os.geteuid()).pw_name
ALIASES = """\
# lists of the local domain
team: alice, bob,
    ext@partner.example
owner-team: lead
all: team, carol
a: b
b: a, ann
"""


def api(daemon: Daemon, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/api/{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"} if body is not None else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def inbox(daemon: Daemon, mailbox: str) -> list[str]:
    """The subjects in a local mailbox's inbox."""
    messages = api(daemon, f"queue?folder=inbox&mailbox={mailbox}")
    return [m["id"] for m in messages]


def configure(spool: Spool, aliases: str) -> Path:
    path = spool.data.parent / "aliases"
    path.write_text(aliases)
    (spool.data / "msgspool.toml").write_text(f'aliases = "{path}"\n')
    return path


@pytest.mark.timeout(90)
def test_smtp_http_and_sendmail_mail_to_an_alias_reaches_its_members(spool: Spool, relay: Sink,
                                                                     daemon: Daemon) -> None:
    configure(spool, ALIASES)
    relay.dsn = True  # so that the ORCPT the expansion keeps is sent on
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.ehlo()
        assert session.mail("writer@example.com")[0] == 250
        assert session.rcpt("team@localhost")[0] == 250
        assert session.rcpt("alice@localhost")[0] == 250  # also a member: delivered once
        code, text = session.data(tagged_message("smtp", to="team@localhost", newline="\r\n").encode())
        assert code == 250, text
    spool.wait_for_sink(relay, 1)
    [got] = relay.messages
    assert got.sender == "owner-team@localhost" and got.recipients == ["ext@partner.example"]
    assert any("RCPT TO:<ext@partner.example>" in c and "ORCPT=rfc822;team@localhost" in c for c in relay.commands)
    assert len(inbox(daemon, "alice@localhost")) == 1 and len(inbox(daemon, "bob@localhost")) == 1

    # the history of the message as written says what the alias became
    [original] = [m for m in spool_messages(spool) if m["sender"] == "writer@example.com"]
    shown = spool.show(original["id"])
    details = [h["detail"] for h in shown["history"] if h["stage"] == "expansion"]
    assert any(d.startswith("ext@partner.example: expanded from team@localhost") for d in details), details
    # every recipient went with the list's owner as sender (alice too: she came first through team)
    assert shown["recipients"] == [] and shown["folder"] == "sent"
    [part] = [m for m in spool_messages(spool) if m["sender"] == "owner-team@localhost"]
    assert [r["address"] for r in part["recipients"]] == ["alice@localhost", "bob@localhost", "ext@partner.example"]

    # sendmail: nested (all -> team) and routed by the daemon
    spool.sendmail(tagged_message("sendmail", to="all@localhost"), "all@localhost")
    spool.wait_for_sink(relay, 2)
    spool.wait_until(lambda: len(inbox(daemon, "carol@localhost")) == 1, "carol's copy")
    assert len(inbox(daemon, "alice@localhost")) == 2

    # HTTP
    answer = api(daemon, "messages", {"sender": "app@example.com", "recipients": ["team@localhost"],
                                      "content": tagged_message("http", to="team@localhost")})
    assert answer["id"]
    spool.wait_for_sink(relay, 3)
    assert received_tags(relay) == ["smtp", "sendmail", "http"]
    assert all(m.sender == "owner-team@localhost" for m in relay.messages)


def spool_messages(spool: Spool) -> list[dict[str, Any]]:
    result = spool.run("queue", "list", "--all", "--json")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.timeout(60)
def test_a_loop_fails_that_member_with_554_and_the_sender_gets_a_report(spool: Spool, relay: Sink,
                                                                         daemon: Daemon) -> None:
    configure(spool, ALIASES)
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.sendmail("writer@example.com", ["a@localhost"], tagged_message("loop", to="a@localhost",
                                                                                newline="\r\n"))
    spool.wait_until(lambda: len(inbox(daemon, "ann@localhost")) == 1, "ann's copy")
    spool.wait_for_sink(relay, 1)  # the NDR for the looping member goes back to the writer
    [ndr] = relay.messages
    assert ndr.sender == "" and ndr.recipients == ["writer@example.com"]
    assert b"5.4.6" in ndr.content and b"alias loop: a@localhost -> b@localhost -> a@localhost" in ndr.content


@pytest.mark.timeout(90)
def test_sighup_reads_the_aliases_again_and_a_broken_file_keeps_the_running_table(spool: Spool, relay: Sink,
                                                                                   daemon: Daemon) -> None:
    path = configure(spool, "team: alice\n")
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    spool.sendmail(tagged_message("one", to="team@localhost"), "team@localhost")
    spool.wait_until(lambda: len(inbox(daemon, "alice@localhost")) == 1, "alice's copy")

    path.write_text("team: alice, zoe\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    spool.wait_until(lambda: "configuration reloaded" in daemon.log() or "reloaded" in daemon.log(), "the reload")
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.sendmail("w@example.com", ["team@localhost"], tagged_message("two", newline="\r\n"))
    spool.wait_until(lambda: len(inbox(daemon, "zoe@localhost")) == 1, "zoe's copy after the reload")

    path.write_text("team alice\n")  # broken: refused, the table read before stays
    refused = spool.run("reload", ok=False)
    assert refused.returncode == 1 and "aliases:" in refused.stderr and ":1:" in refused.stderr, refused
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.sendmail("w@example.com", ["team@localhost"], tagged_message("three", newline="\r\n"))
    spool.wait_until(lambda: len(inbox(daemon, "zoe@localhost")) == 2, "zoe's copy with the kept table")
    assert daemon.running


def test_aliases_check_reports_problems_with_line_numbers_and_expand_shows_the_members(spool: Spool) -> None:
    path = configure(spool, ALIASES + "broken\nx: \"|procmail -a x\", \"|/no/such/command\"\n")
    result = spool.run("aliases", "check", ok=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"{path}:8: expected 'name: member, ...'" in lines
    assert f"{path}:9: |procmail -a x: the command needs an absolute path (it is run without a shell or PATH" \
           " search)" in lines
    assert f"{path}:9: |/no/such/command: /no/such/command is not an executable file" in lines
    assert any(line.startswith(f"{path}:6: alias loop: a@localhost -> b@localhost -> a@localhost") for line in lines)

    path.write_text(ALIASES)
    expanded = json.loads(spool.run("aliases", "expand", "all@localhost", "--json").stdout)
    assert [(r["address"], r["sender"]) for r in expanded["recipients"]] == [
        ("alice@localhost", "owner-team@localhost"), ("bob@localhost", "owner-team@localhost"),
        ("ext@partner.example", "owner-team@localhost"), ("carol@localhost", None)]


def test_serve_refuses_commands_it_cannot_run_and_files_from_include_files(spool: Spool) -> None:
    listed = spool.data.parent / "list"
    listed.write_text("ann, /var/mail/box/\n")
    configure(spool, f"deliver: \"|procmail\", :include:{listed}\n")
    result = spool.run("serve", "--smtp", "127.0.0.1:0", "--http", "", ok=False)
    assert result.returncode == 2, result
    assert "|procmail: the command needs an absolute path" in result.stderr
    assert (f"{listed}:1: /var/mail/box/: files and maildirs are not allowed in :include: files (add \"include\""
            " to allow_mail_to_files to allow them)") in result.stderr


@pytest.mark.timeout(60)
def test_mail_over_smtp_to_an_alias_with_a_maildir_and_a_file_member_is_written_into_both(
        spool: Spool, relay: Sink, daemon: Daemon, tmp_path: Path) -> None:
    box, file = tmp_path / "archive" / "Maildir", tmp_path / "archive.mbox"
    path = configure(spool, f"archive: {box}/, {file}, alice\n")
    (spool.data / "msgspool.toml").write_text(f'aliases = "{path}"\naliases_user = "{ME}"\n')
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    body = "From: w@example.com\r\nSubject: filed\r\n\r\nFrom the archive's point of view\r\n"
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.sendmail("w@example.com", ["archive@localhost"], body)
        session.sendmail("", ["archive@localhost"], body.replace("filed", "bounce"))
    spool.wait_until(lambda: len(inbox(daemon, "alice@localhost")) == 2, "alice's copies")
    messages = [m for m in spool_messages(spool) if m["origin"] == "smtp"]
    for message in messages:
        spool.wait_until(lambda m=message: spool.recipient_statuses(m["id"]) == ["delivered"] * 3, "delivered")
    shown = json.loads(spool.run("queue", "show", messages[0]["id"], "--json").stdout)
    files = [r for r in shown["recipients"] if r["addrtype"] == "ALIAS-FILE"]
    assert [(r["address"], r["transport"], r["orcpt"]) for r in files] == [
        (f"{box}/", "aliases-file", "rfc822;archive@localhost"),
        (str(file), "aliases-file", "rfc822;archive@localhost")]
    assert files[1]["last_reply"] == f"250 2.0.0 delivered to file {file}"
    assert any(f"{file}: expanded from archive@localhost ({path}:1)" in json.dumps(h) for h in shown["history"])

    maildir = sorted(mailbox.Maildir(box, create=False), key=lambda m: str(m["Subject"]))
    assert [(m["Subject"], m["Return-Path"], m["Delivered-To"]) for m in maildir] == [
        ("bounce", "<>", "archive@localhost"), ("filed", "<w@example.com>", "archive@localhost")]
    mbox = mailbox.mbox(file, create=False).values()
    assert [m["Subject"] for m in mbox] == ["filed", "bounce"]
    assert mbox[0].get_from().startswith("w@example.com  ") and mbox[1].get_from().startswith("MAILER-DAEMON  ")
    assert mbox[0].get_payload() == ">From the archive's point of view\n"
    assert maildir[1].get_payload() == "From the archive's point of view\n"

    # nobody may hand the aliases' file transport a path of their own
    status, problem = post(daemon, "/api/messages", {"sender": "a@example.com", "recipients": ["/etc/passwd"],
                                                "addrtypes": ["ALIAS-FILE"], "content": "Subject: x\r\n\r\nx\r\n"})
    assert status == 422 and "5.7.1" in problem["detail"], problem


@pytest.mark.timeout(60)
def test_a_command_member_runs_with_the_message_on_stdin_and_the_alias_as_recipient(
        spool: Spool, relay: Sink, daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    hook = tmp_path / "hook.py"
    hook.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    "with open(os.path.join(sys.argv[1], 'mail'), 'wb') as f: f.write(sys.stdin.buffer.read())\n"
                    "with open(os.path.join(sys.argv[1], 'env'), 'w') as f:\n"
                    "    f.write(os.environ['RECIPIENT'] + ' ' + os.environ['SENDER'] + ' ' + sys.argv[2])\n")
    hook.chmod(0o755)
    path = configure(spool, f'tickets: "|{hook} {out} \'two words\'", alice\n')
    (spool.data / "msgspool.toml").write_text(f'aliases = "{path}"\naliases_user = "{ME}"\n')
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.sendmail("writer@example.com", ["tickets@localhost"], tagged_message("cmd", newline="\r\n"))
    spool.wait_until(lambda: (out / "env").exists(), "the command's run")
    assert (out / "env").read_text() == "tickets@localhost writer@example.com two words"
    mail = (out / "mail").read_bytes()
    assert mail.startswith(b"Return-Path: <writer@example.com>\nDelivered-To: tickets@localhost\n")
    assert b"X-E2E-Tag: cmd" in mail
    [message] = [m for m in spool_messages(spool) if m["sender"] == "writer@example.com"]
    command = next(r for r in message["recipients"] if r["addrtype"] == "ALIAS-PIPE")
    spool.wait_until(lambda: spool.recipient_statuses(message["id"]) == ["delivered", "delivered"], "delivered")
    assert command["transport"] == "aliases" and command["orcpt"] == "rfc822;tickets@localhost"

    # nobody may hand the aliases' transport a command of their own
    status, problem = post(daemon, "/api/messages", {"sender": "a@example.com", "recipients": ["/bin/sh -c id"],
                                                "addrtypes": ["ALIAS-PIPE"], "content": "Subject: x\r\n\r\nx\r\n"})
    assert status == 422 and "5.7.1" in problem["detail"], problem


@pytest.mark.timeout(60)
def test_sendmail_without_the_daemons_config_leaves_the_alias_to_the_daemon(spool: Spool, relay: Sink,
                                                                            daemons: Any) -> None:
    aliases = spool.data.parent / "aliases"
    aliases.write_text("team: alice, ext@partner.example\n")
    config = spool.data.parent / "daemon.toml"  # the daemon's alone: sendmail reads no aliases
    config.write_text(f'aliases = "{aliases}"\n')
    daemon = daemons(spool.data, relay.address, extra_args=["--config", str(config)])
    spool.daemon = daemon
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    spool.sendmail(tagged_message("late", to="team@localhost"), "-f", "writer@example.org", "-N", "success,failure",
                   "team@localhost")

    def expanded_report() -> Any:
        return next((m for m in list(relay.messages) if m.sender == "" and b"Action: expanded" in m.content), None)

    report = spool.wait_until(expanded_report, "the `expanded` report the sender asked for")
    assert report.recipients == ["writer@example.org"] and b"Final-Recipient: rfc822; team@localhost" in report.content
    [member] = [m for m in relay.messages if m.recipients == ["ext@partner.example"]]
    assert b"X-E2E-Tag: late" in member.content and member.sender == "writer@example.org"
    spool.wait_until(lambda: len(inbox(daemon, "alice@localhost")) == 1, "alice's copy")
    time.sleep(1.0)  # a report the members owed (relayed, delivered) would be written by now
    assert [m for m in relay.messages if m.sender == ""] == [report]  # they owe none: NOTIFY minus SUCCESS
    spool.wait_until(lambda: len(inbox(daemon, "alice@localhost")) == 1, "alice's copy")
    assert inbox(daemon, "team@localhost") == []  # never filed under the alias's own name
    [original] = [m for m in spool_messages(spool) if m["origin"] == "sendmail"]
    [team] = original["recipients"]
    assert team["status"] == "delivered" and "expanded by aliases into message" in team["last_reply"]


def test_a_broken_aliases_file_stops_serve_but_never_sendmail(spool: Spool) -> None:
    configure(spool, "team alice\n")
    accepted = spool.sendmail(tagged_message("kept", to="team@localhost"), "team@localhost")
    assert accepted.returncode == 0, accepted  # queued for the daemon, which expands (or refuses) later
    [queued] = spool.queue()
    assert [r["address"] for r in queued["recipients"]] == ["team@localhost"]
    result = spool.run("serve", "--smtp", "127.0.0.1:0", "--http", "", ok=False)
    assert result.returncode == 2 and "aliases:1: expected 'name: member, ...'" in result.stderr, result
