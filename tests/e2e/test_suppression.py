"""The suppression list end to end (issue 12.9, Postal's): an address a remote answers 550 5.1.1 is
suppressed; new mail to it is refused at RCPT over SMTP, fails at once over HTTP and sendmail — no
delivery attempt — with the reason and until when; `msgspool suppression` and `/api/suppressions`
(behind the tokens) list, add and remove entries; a local failure (the cap on attempts) suppresses
nothing."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.daemon import Daemon, Spool, port_open, tagged_message
from tests.support.sink import Sink

GONE = "fail5xx-gone@example.com"  # the sink answers 550 5.1.1 to fail5xx-*


def api(daemon: Daemon, path: str, body: Any = None, *, method: str | None = None,
        token: str | None = None) -> tuple[int, Any]:
    # every state-changing request declares JSON (web/access.py: a browser's form cannot)
    headers = {"Content-Type": "application/json"} if body is not None or method else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/{path}",
                                     method=method or ("POST" if body is not None else "GET"),
                                     data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def listed(spool: Spool) -> dict[str, dict[str, Any]]:
    result = spool.run("suppression", "list", "--json")
    return {e["address"]: e for e in (json.loads(line) for line in result.stdout.splitlines() if line.strip())}


def rcpt(daemon: Daemon, address: str) -> tuple[int, str]:
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.ehlo()
        session.mail("writer@example.org")
        code, text = session.rcpt(address)
        session.rset()
        return code, text.decode()


def spool_messages(spool: Spool) -> list[dict[str, Any]]:
    result = spool.run("queue", "list", "--all", "--json")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def rcpts_seen(sink: Sink, address: str) -> int:
    return sum(1 for c in sink.commands if c.upper().startswith("RCPT") and address in c)


@pytest.mark.timeout(120)
def test_a_hard_bounce_suppresses_the_address_on_every_way_in_until_it_is_removed(spool: Spool, relay: Sink,
                                                                                  daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as session:
        session.sendmail("writer@example.org", [GONE, "kept@example.com"],
                         tagged_message("first", to=GONE, newline="\r\n"))
    entry = spool.wait_until(lambda: listed(spool).get(GONE), "the bounce on the suppression list")
    assert entry["source"] == "bounce" and entry["reason"] == "550 5.1.1 No such user here"
    assert entry["until"] > entry["created_at"] and entry["message_id"]
    assert "kept@example.com" not in listed(spool)
    assert rcpts_seen(relay, GONE) == 1

    # SMTP: refused at RCPT, within the second intake takes to see the list
    _code, text = spool.wait_until(lambda: (r := rcpt(daemon, GONE.upper()))[0] == 550 and r, "the RCPT refusal")
    assert text.startswith("5.1.1 <fail5xx-gone@example.com>: Recipient address suppressed until 20")
    assert "it bounced: 550 5.1.1 No such user here" in text

    # HTTP: committed, that recipient failed at once with the same reply
    status, answer = api(daemon, "messages", {"sender": "app@example.org", "recipients": [GONE, "ok@example.com"],
                                              "content": tagged_message("http", to=GONE)})
    assert status == 201
    by_address = {r["address"]: r for r in answer["recipients"]}
    assert by_address[GONE]["status"] == "failed" and by_address[GONE]["reply"].startswith("550 5.1.1 <fail5xx-gone")
    assert by_address["ok@example.com"]["status"] != "failed"
    history = spool.show(answer["id"])["history"]
    assert any(h["stage"] == "submission" and h["hook"] == "suppression" for h in history), history

    # sendmail (with the daemon's spool, not its settings): the store refuses it in the commit
    spool.sendmail(tagged_message("sendmail", to=GONE), "-f", "writer@example.org", GONE)
    [sent] = [m for m in spool_messages(spool) if m["origin"] == "sendmail"]
    [recipient] = sent["recipients"]
    assert recipient["status"] == "failed" and recipient["attempts"] == 0
    assert recipient["last_reply"].startswith("550 5.1.1 <fail5xx-gone@example.com>: Recipient address suppressed")
    spool.wait_for_sink(relay, 4)  # kept@ and ok@ delivered, the NDRs of the first two to writer@ and app@
    assert rcpts_seen(relay, GONE) == 1  # never tried again

    # the operator takes it off: mail goes again
    assert "removed" in spool.run("suppression", "remove", GONE).stdout
    spool.wait_until(lambda: rcpt(daemon, GONE)[0] == 250, "the RCPT accepted again")
    assert spool.run("suppression", "remove", GONE, ok=False).returncode == 1


@pytest.mark.timeout(90)
def test_the_http_api_lists_adds_and_removes_behind_the_tokens(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    status, entry = api(daemon, "suppressions", {"address": "Stop@Example.com", "reason": "asked us to stop",
                                                 "days": 0})
    assert status == 201 and entry["address"] == "stop@example.com" and entry["until"] is None
    assert entry["source"] == "operator"
    code, text = rcpt(daemon, "stop@example.com")  # the same process: at once
    assert code == 550 and "until removed (asked us to stop)" in text
    status, entries = api(daemon, "suppressions")
    assert status == 200 and [e["address"] for e in entries] == ["stop@example.com"]
    assert api(daemon, "suppressions", {"address": "not an address"})[0] == 400
    assert api(daemon, "suppressions", {"address": "x@example.com", "until": "2020-01-01"})[0] == 400  # no zone

    reader = spool.run("token", "create", "--scope", "read", "--name", "reader").stdout.split()[-1]
    admin = spool.run("token", "create", "--scope", "admin", "--name", "admin").stdout.split()[-1]
    assert api(daemon, "suppressions")[0] == 401  # tokens exist now: none, no entry
    assert api(daemon, "suppressions", token=reader)[0] == 200
    assert api(daemon, "suppressions/stop@example.com", method="DELETE", token=reader)[0] == 403
    assert api(daemon, "suppressions/stop@example.com", method="DELETE", token=admin) == (
        200, {"ok": True, "address": "stop@example.com"})
    assert api(daemon, "suppressions/stop@example.com", method="DELETE", token=admin)[0] == 404
    assert rcpt(daemon, "stop@example.com")[0] == 250
    status, entry = api(daemon, "suppressions", {"address": "later@example.com"}, token=admin)
    assert status == 201 and entry["until"] is not None  # suppression_time from now by default


@pytest.mark.timeout(60)
def test_a_local_failure_suppresses_nothing_and_the_cli_adds_with_a_time(spool: Spool, relay: Sink,
                                                                        daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    status, answer = api(daemon, "messages", {"sender": "app@example.org", "recipients": ["fail4xx-x@example.com"],
                                              "content": "Subject: x\r\n\r\nx\r\n", "max_attempts": 1})
    assert status == 201
    spool.wait_until(lambda: spool.recipient_statuses(answer["id"]) == ["failed"], "the cap on attempts")
    assert listed(spool) == {}  # 554 5.4.7 is ours, not the remote's word on the address
    added = json.loads(spool.run("suppression", "add", "x@example.com", "--days", "2", "--json").stdout)
    assert added["source"] == "operator" and added["reason"] == "added by the operator"
    assert list(listed(spool)) == ["x@example.com"]
    assert spool.run("suppression", "add", "not-an-address", ok=False).returncode == 2
    local = spool.run("suppression", "add", "bob@localhost", ok=False)
    assert local.returncode == 2 and "local domain" in local.stderr
    status, problem = api(daemon, "suppressions", {"address": "Bob@LocalHost"})
    assert status == 422 and problem["field"] == "address" and "local domain" in problem["detail"]
