"""Fetch as a user runs it: `msgspool serve` with [[fetch]] accounts in msgspool.toml polls a real
Dovecot, files each message once into the local mailbox with a new_mail event on the SSE stream,
deletes it there, shows each account in `msgspool status`, and keeps running with a wrong password
(that account in failure, with a log line). A restart fetches only what came since."""

from __future__ import annotations

import imaplib
import json
import mailbox
import poplib
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DOVECOT_USERS
from tests.support import dovecot
from tests.support.daemon import Daemon, Spool, port_open
from tests.support.sse import SseClient


def message(subject: str) -> bytes:
    return f"From: sender@example.net\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def config(server: dovecot.Dovecot, tmp_path: Path) -> str:
    good, bad = tmp_path / "alice.pw", tmp_path / "bob.pw"
    good.write_text(DOVECOT_USERS["alice"] + "\n")
    bad.write_text("not-bobs-password\n")
    account = f'protocol = "pop3"\nhost = "127.0.0.1"\nport = {server.pop3_port}\nsecurity = "none"\ninterval = 0.5\n'
    return (f'[[fetch]]\nname = "alice"\n{account}user = "alice"\npassword_file = "{good}"\n'
            f'mailbox = "alice@localhost"\n\n'
            f'[[fetch]]\nname = "bob"\n{account}user = "bob"\npassword_file = "{bad}"\nmailbox = "bob@localhost"\n')


def on_server(server: dovecot.Dovecot) -> int:
    pop = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    pop.user("alice")
    pop.pass_(DOVECOT_USERS["alice"])
    count = int(pop.stat()[0])
    pop.quit()
    return count


def exported(spool: Spool, tmp_path: Path) -> list[str]:
    target = tmp_path / "export"
    spool.run("mailbox", "export", "alice@localhost", str(target))
    return sorted(str(m["Subject"]) for m in mailbox.Maildir(target, create=False))


def test_serve_fetches_over_pop3_once_deletes_after_the_commit_and_survives_a_wrong_password(
        tmp_path: Path, spool: Spool, daemon: Daemon, dovecot_server: dovecot.Dovecot) -> None:
    dovecot_server.deliver("alice", message("one"))
    dovecot_server.deliver("alice", message("two"))
    (spool.data / "msgspool.toml").write_text(config(dovecot_server, tmp_path))
    daemon.start()
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", daemon.http_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    events = SseClient(daemon.http_port, "types=new_mail&mailbox=alice@localhost", last_event_id="0").opened()
    try:
        seen = events.wait_for(2, timeout=20)
    finally:
        events.close()
    assert {e.data["folder"] for e in seen} == {"inbox"}
    spool.wait_until(lambda: on_server(dovecot_server) == 0, "the fetched mail deleted on the server")
    spool.wait_until(lambda: {r["name"]: r for r in spool.status()["fetch"]}["bob"]["status"] == "failure",
                     "bob's account in failure")
    rows = {r["name"]: r for r in spool.status()["fetch"]}
    assert rows["alice"]["status"] == "online" and rows["alice"]["fetched"] == 2
    assert "refused the login of bob" in rows["bob"]["reason"]
    assert "fetch bob: status=failure login refused" in daemon.log()
    assert "not-bobs-password" not in daemon.log() and "not-bobs-password" not in str(rows)
    text = spool.run("status").stdout
    assert "fetch      alice      online" in text and "fetch      bob        failure" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10) as response:
        samples = {(s.name, tuple(s.labels.items())): s.value
                   for family in text_string_to_metric_families(response.read().decode()) for s in family.samples}
    assert samples[("msgspool_fetched_total", (("account", "alice"),))] == 2
    assert samples[("msgspool_fetch_up", (("account", "alice"),))] == 1
    assert samples[("msgspool_fetch_up", (("account", "bob"),))] == 0
    assert daemon.stop() == 0
    dovecot_server.deliver("alice", message("three"))
    daemon.start()
    spool.wait_until(lambda: on_server(dovecot_server) == 0, "the new message fetched after the restart")
    daemon.stop()
    assert exported(spool, tmp_path) == ["one", "three", "two"]
    stopped = {r["name"]: r["status"] for r in spool.status()["fetch"]}
    assert stopped == {"alice": "stopped", "bob": "stopped"}


def test_serve_fetches_over_imap_with_idle_and_moves_the_mail_after_the_commit(
        tmp_path: Path, spool: Spool, daemon: Daemon, dovecot_server: dovecot.Dovecot) -> None:
    password = tmp_path / "alice.pw"
    password.write_text(DOVECOT_USERS["alice"] + "\n")
    (spool.data / "msgspool.toml").write_text(
        f'[[fetch]]\nname = "imap"\nprotocol = "imap"\nhost = "127.0.0.1"\nport = {dovecot_server.imap_port}\n'
        f'security = "none"\nuser = "alice"\npassword_file = "{password}"\nmailbox = "alice@localhost"\n'
        f'after = "move:Archive"\ninterval = 300\n')
    dovecot_server.deliver("alice", message("waiting"))
    daemon.start()
    spool.wait_until(lambda: spool.status()["fetch"][0]["idle"], "the account idling", timeout=20)
    dovecot_server.deliver("alice", message("pushed"))  # IDLE: long before the 300 s interval
    spool.wait_until(lambda: spool.status()["fetch"][0]["fetched"] == 2, "the new message fetched", timeout=20)
    daemon.stop()
    assert exported(spool, tmp_path) == ["pushed", "waiting"]
    imap = imaplib.IMAP4("127.0.0.1", dovecot_server.imap_port, timeout=10)
    imap.login("alice", DOVECOT_USERS["alice"])
    assert imap.select("INBOX", readonly=True)[1] == [b"0"]
    assert imap.select("Archive", readonly=True)[1] == [b"2"]
    imap.logout()


def test_fetched_mail_goes_through_the_inbound_hooks_a_sieve_script_files_it(
        tmp_path: Path, spool: Spool, daemon: Daemon, dovecot_server: dovecot.Dovecot) -> None:
    password = tmp_path / "alice.pw"
    password.write_text(DOVECOT_USERS["alice"] + "\n")
    (spool.data / "msgspool.toml").write_text(
        f'[[hooks]]\nname = "filters"\ntype = "sieve"\n\n'
        f'[[fetch]]\nname = "pop"\nprotocol = "pop3"\nhost = "127.0.0.1"\nport = {dovecot_server.pop3_port}\n'
        f'security = "none"\nuser = "alice"\npassword_file = "{password}"\nmailbox = "alice@localhost"\n'
        f'interval = 0.5\n')
    (spool.data / "sieve").mkdir()
    (spool.data / "sieve" / "alice@localhost.sieve").write_text(
        'require ["fileinto"];\r\nif header :contains "subject" "report" { fileinto "Reports"; }\r\n')
    dovecot_server.deliver("alice", message("monthly report"))
    dovecot_server.deliver("alice", message("hello"))
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP API")

    def folder(name: str) -> list[str]:
        url = f"http://127.0.0.1:{daemon.http_port}/api/queue?folder={name}&mailbox=alice@localhost"
        with urllib.request.urlopen(url, timeout=5) as response:
            return [str(m["id"]) for m in json.load(response)]

    spool.wait_until(lambda: len(folder("Reports")) == 1 and len(folder("inbox")) == 1,
                     "the script to file both fetched messages", timeout=20)
    spool.wait_until(lambda: on_server(dovecot_server) == 0, "both deleted on the server")


def test_msgspool_fetch_polls_now_and_a_reload_starts_a_new_account(
        tmp_path: Path, spool: Spool, daemon: Daemon, dovecot_server: dovecot.Dovecot) -> None:
    password = tmp_path / "alice.pw"
    password.write_text(DOVECOT_USERS["alice"] + "\n")
    bob = tmp_path / "bob.pw"
    bob.write_text(DOVECOT_USERS["bob"] + "\n")

    def table(name: str, user: str, secret: Path, interval: int = 300) -> str:
        return (f'[[fetch]]\nname = "{name}"\nprotocol = "pop3"\nhost = "127.0.0.1"\n'
                f'port = {dovecot_server.pop3_port}\nsecurity = "none"\nuser = "{user}"\n'
                f'password_file = "{secret}"\nmailbox = "{user}@localhost"\ninterval = {interval}\n\n')

    (spool.data / "msgspool.toml").write_text(table("alice", "alice", password))
    daemon.start()

    def fetched() -> dict[str, int]:
        return {r["name"]: r["fetched"] for r in spool.status()["fetch"] if r["last_poll_at"]}

    spool.wait_until(lambda: fetched() == {"alice": 0}, "the first poll")
    dovecot_server.deliver("alice", message("now"))
    woke = spool.run("fetch", "alice")
    assert "1 fetch account(s) polling now" in woke.stdout
    spool.wait_until(lambda: fetched() == {"alice": 1}, "the poll asked for, long before the 300 s interval")
    unknown = spool.run("fetch", "nobody", ok=False)
    assert unknown.returncode == 1 and "no fetch account nobody" in unknown.stderr
    dovecot_server.deliver("alice", message("over http"))
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/fetch/alice", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response) == {"ok": True, "accounts": 1}
    spool.wait_until(lambda: fetched() == {"alice": 2}, "the poll asked for over HTTP")
    missing = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/fetch/nobody", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(missing, timeout=5)
    assert refused.value.code == 404
    dovecot_server.deliver("bob", message("for bob"))
    (spool.data / "msgspool.toml").write_text(table("alice", "alice", password) + table("bob", "bob", bob))
    assert spool.run("reload").returncode == 0
    # alice's settings did not change: her Fetcher goes on (its count too), only bob's starts
    spool.wait_until(lambda: fetched() == {"alice": 2, "bob": 1}, "the new account started by the reload")
    assert "fetch accounts reloaded: alice, bob (started: bob)" in daemon.log()
    (spool.data / "msgspool.toml").write_text(table("bob", "bob", bob, interval=301))  # alice gone, bob changed
    assert spool.run("reload").returncode == 0
    spool.wait_until(lambda: fetched() == {"bob": 0}, "bob restarted with his new settings, alice stopped")
    assert [r["name"] for r in spool.status()["fetch"]] == ["bob"]
    assert "fetch accounts reloaded: bob (started: bob)" in daemon.log()


def test_a_daemon_killed_in_the_middle_of_a_fetch_files_every_message_exactly_once_after_the_restart(
        tmp_path: Path, spool: Spool, daemon: Daemon, dovecot_server: dovecot.Dovecot) -> None:
    """kill -9 while messages are being filed and deleted (DELEs not yet committed by QUIT): the
    restarted daemon finds the ids it recorded, deletes those messages, fetches the rest."""
    count = 300
    for n in range(count):
        dovecot_server.deliver("alice", message(f"m{n:03d}"))
    (spool.data / "msgspool.toml").write_text(config(dovecot_server, tmp_path))
    daemon.start()
    spool.wait_until(lambda: "fetch=alice uid=" in daemon.log(), "the first message filed", interval=0.01)
    daemon.kill()
    first_run = daemon.log().count("fetch=alice uid=")
    assert 0 < first_run < count, "the kill came after the whole fetch: nothing tested"
    assert on_server(dovecot_server) == count  # QUIT never came: nothing deleted there yet
    daemon.start()
    spool.wait_until(lambda: on_server(dovecot_server) == 0, "the rest fetched after the restart", timeout=60)
    daemon.stop()
    subjects = exported(spool, tmp_path)
    assert subjects == [f"m{n:03d}" for n in range(count)]  # each once: none lost, none twice
