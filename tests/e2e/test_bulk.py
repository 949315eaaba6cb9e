"""Bulk actions by selector as an operator runs them: `msgspool queue ACTION --where ...` (through
the daemon and with it down) and POST /api/queue/actions, on a few hundred queued messages, with
--dry-run counting first and --json answering one object."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.daemon import Daemon, Spool, cli_env, msgspool_command
from tests.support.sink import Sink

ALPHA, BETA = 200, 100  # messages from @alpha.test to x@one.test, from @beta.test to y@two.test


def api(daemon: Daemon, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/api/{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def fill(daemon: Daemon) -> dict[str, list[str]]:
    """Submit the messages over HTTP; the ids by sender domain."""
    ids: dict[str, list[str]] = {"alpha": [], "beta": []}
    for n in range(ALPHA + BETA):
        name, rcpt = ("alpha", "x@one.test") if n < ALPHA else ("beta", "y@two.test")
        status, body = api(daemon, "messages", {"sender": f"s{n}@{name}.test", "recipients": [rcpt],
                                                "content": f"Subject: bulk {n}\r\n\r\nbody\r\n"})
        assert status == 201, body
        ids[name].append(body["id"])
    return ids


def statuses(spool: Spool) -> dict[str, str]:
    """Each outbox message's first recipient's status, by id."""
    return {m["id"]: m["recipients"][0]["status"] for m in spool.queue()}


def run_json(spool: Spool, *args: str, ok: bool = True) -> dict[str, Any]:
    result = spool.run("queue", *args, "--json", ok=ok)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # one JSON object with what was done
    answer: dict[str, Any] = json.loads(lines[0])
    return answer


@pytest.mark.timeout(180)
def test_selectors_with_dry_run_over_the_cli_and_http_on_hundreds_of_messages(spool: Spool, relay: Sink,
                                                                              daemon: Daemon) -> None:
    # The relay stays down: everything waits, deferred; its destination is probed only when flushed.
    (spool.data / "msgspool.toml").write_text("probe_min = 600.0\nprobe_max = 600.0\n")
    daemon.start(also=[daemon.http_port])
    ids = fill(daemon)
    spool.wait_until(lambda: set(statuses(spool).values()) == {"deferred"}, "every message deferred", timeout=60)

    dry = run_json(spool, "hold", "--where", "sender=@alpha.test", "--dry-run")
    assert (dry["action"], dry["dry_run"], dry["matched"]) == ("hold", True, ALPHA)
    assert sorted(dry["ids"]) == sorted(ids["alpha"])
    assert set(statuses(spool).values()) == {"deferred"}, "a dry run changes nothing"
    text = spool.run("queue", "hold", "--where", "sender=@alpha.test", "--dry-run").stdout
    assert text.startswith(f"{ALPHA} messages match sender=@alpha.test (dry run"), text

    held = run_json(spool, "hold", "--where", "sender=@alpha.test,status=deferred")
    assert (held["matched"], held["count"], held["in_flight"]) == (ALPHA, ALPHA, {})
    now = statuses(spool)
    assert {now[i] for i in ids["alpha"]} == {"held"} and {now[i] for i in ids["beta"]} == {"deferred"}

    # Over HTTP: a dry run counts, then the action; the where as text or as an object.
    status, body = api(daemon, "queue/actions", {"action": "release", "where": {"status": "held"}, "dry_run": True})
    assert (status, body["matched"], body["dry_run"]) == (200, ALPHA, True), body
    assert set(statuses(spool).values()) == {"held", "deferred"}
    status, body = api(daemon, "queue/actions", {"action": "release", "where": "status=held,recipient=x@one.test"})
    assert (status, body["matched"], body["count"]) == (200, ALPHA, ALPHA), body
    assert sorted(body["ids"]) == sorted(ids["alpha"])
    assert "held" not in statuses(spool).values()

    status, body = api(daemon, "queue/actions", {"action": "hold", "where": "colour=blue"})
    assert status == 400 and "'colour'" in body["detail"] and body.get("field") == "where", body
    status, body = api(daemon, "queue/actions", {"action": "shred", "where": "status=held"})
    assert status == 400 and body.get("field") == "action", body
    bad = spool.run("queue", "delete", "--where", "older-than=soon", ok=False)
    assert bad.returncode == 2 and "'older-than'" in bad.stderr, bad.stderr
    assert len(statuses(spool)) == ALPHA + BETA

    # Nothing older than a day; then the @two.test ones deleted, with the daemon down.
    assert run_json(spool, "delete", "--where", "older-than=1d")["count"] == 0
    assert daemon.stop() == 0, daemon.log_tail()
    gone = run_json(spool, "delete", "--where", "recipient=@two.test")
    assert (gone["matched"], gone["count"]) == (BETA, BETA)
    assert sorted(statuses(spool)) == sorted(ids["alpha"])

    # flush --where: the relay answers again; what waits for it is due now, and goes.
    daemon.start(also=[daemon.http_port])
    spool.wait_until(lambda: set(statuses(spool).values()) == {"deferred"}, "retried and deferred", timeout=60)
    relay.start()
    flushed = run_json(spool, "flush", "--where", f"destination={relay.address}")
    assert flushed["count"] == ALPHA and flushed["flushed"] == ALPHA, flushed
    spool.wait_until(lambda: spool.queue() == [], "the flushed messages to be delivered", timeout=60)
    assert relay.count() == ALPHA


def test_a_bulk_run_on_a_terminal_draws_a_progress_bar_on_stderr(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    daemon.start(also=[daemon.http_port])
    ids = fill_few(daemon, 30)
    assert daemon.stop() == 0
    primary, secondary = os.openpty()  # stderr a terminal, stdout a pipe
    try:
        proc = subprocess.run([*msgspool_command(), "queue", "hold", "--where", "recipient=@one.test",
                               "--data", str(spool.data)], stdout=subprocess.PIPE, stderr=secondary,
                              env=cli_env(), timeout=60, check=False)
        os.close(secondary)
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0, drawn
    assert b"30 of 30 messages matching recipient=@one.test held" in proc.stdout
    assert b"] 30/30 messages held" in drawn and b"\r[" in drawn, drawn
    now = statuses(spool)
    assert {now[i] for i in ids} == {"held"}
    # Without a terminal (a pipe, as in scripts), nothing but the answer.
    quiet = spool.run("queue", "release", "--where", "recipient=@one.test")
    assert quiet.stderr == "" and "30 of 30" in quiet.stdout


def fill_few(daemon: Daemon, count: int) -> list[str]:
    out = []
    for n in range(count):
        status, body = api(daemon, "messages", {"sender": f"s{n}@alpha.test", "recipients": ["x@one.test"],
                                                "content": "Subject: few\r\n\r\nbody\r\n"})
        assert status == 201, body
        out.append(body["id"])
    time.sleep(0.1)
    return out
