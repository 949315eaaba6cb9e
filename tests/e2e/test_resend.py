"""Issue 12.7: `msgspool queue resend ID` (MAPI MSGFLAG_RESEND) through the CLI and the HTTP API,
with the daemon up and down: a new message with the same content, to only the recipients that
failed or expired, linked to the original both ways."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.support.daemon import Daemon, Spool, post, received_tags, tagged_message
from tests.support.sink import Sink

PROMPT = 5.0


def get(daemon: Daemon, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def finished(spool: Spool, message_id: str) -> bool:
    return all(r["status"] in ("delivered", "failed", "expired") for r in spool.show(message_id)["recipients"])


def test_resend_sends_again_only_to_the_recipients_that_failed_linked_both_ways(spool: Spool, relay: Sink,
                                                                                daemon: Daemon) -> None:
    relay.start()
    daemon.start(also=[daemon.http_port])  # the daemon listens for SMTP first
    status, body = post(daemon, "/api/messages", {
        "sender": "alice@example.org", "recipients": ["ok@example.com", "fail5xx-gone@example.com"],
        "content": tagged_message("first", to="ok@example.com").replace("\n", "\r\n")})
    assert status == 201, body
    original = body["id"]
    spool.wait_until(lambda: finished(spool, original), "the first delivery to settle")
    assert received_tags(relay) == ["first"]

    result = spool.run("queue", "resend", original, "--json")
    answer = json.loads(result.stdout)
    assert answer["resend_of"] == original and answer["recipients"] == ["fail5xx-gone@example.com"], answer
    resend = answer["id"]
    spool.wait_until(lambda: finished(spool, resend), "the resend to settle")
    shown = spool.show(resend)
    assert shown["resend_of"] == original and shown["resends"] == []
    assert [(r["address"], r["status"]) for r in shown["recipients"]] == [("fail5xx-gone@example.com", "failed")]
    assert spool.show(original)["resends"] == [resend]
    assert get(daemon, f"/api/queue/{original}")["resends"] == [resend]
    assert get(daemon, f"/api/queue/{resend}")["resend_of"] == original
    assert any(h["outcome"] == "resent" and resend in h["detail"] for h in spool.show(original)["history"])
    rcpts = [c for c in relay.commands if c.upper().startswith("RCPT")]
    assert sum("ok@" in c for c in rcpts) == 1, rcpts  # the delivered recipient is not sent to again
    # The address hard-bounced, so it is on the suppression list: the resend fails at once, unsent.
    assert sum("fail5xx-gone" in c for c in rcpts) == 1, rcpts
    assert "suppressed" in shown["recipients"][0]["last_reply"], shown
    text = spool.run("queue", "show", original).stdout
    assert f"resent (as {resend} to <fail5xx-gone@example.com>)" in text, text

    nothing = spool.run("queue", "resend", resend + "x", ok=False)
    assert nothing.returncode == 1 and "no message" in nothing.stderr, nothing
    status, body = post(daemon, f"/api/queue/{resend}/resend")
    assert status == 201, body  # the resend failed too: it can be resent in turn


def test_an_expired_message_resent_over_http_is_delivered_with_the_same_content(spool: Spool, relay: Sink,
                                                                              daemon: Daemon) -> None:
    daemon.start(also=[daemon.http_port])  # the relay is down: the message waits, then expires
    status, body = post(daemon, "/api/messages", {
        "sender": "alice@example.org", "recipients": ["late@example.com"],
        "content": tagged_message("late", to="late@example.com").replace("\n", "\r\n"),
        "expires_at": time.time() + 2})
    assert status == 201, body
    original = body["id"]
    spool.wait_until(lambda: spool.recipient_statuses(original) == ["expired"], "the message to expire",
                     timeout=15)
    relay.start()
    status, body = post(daemon, f"/api/queue/{original}/resend")
    assert status == 201 and body["recipients"] == ["late@example.com"], body
    spool.wait_until(lambda: received_tags(relay) == ["late"], "the resend at the relay", timeout=PROMPT)
    [resent] = [m for m in relay.messages if m.sender]  # the other one: the expiry's NDR, from <>
    assert (resent.sender, resent.recipients) == ("alice@example.org", ["late@example.com"])
    assert resent.content.startswith(b"From: alice@example.org\r\nTo: late@example.com\r\nSubject: e2e late")
    delivered = spool.show(body["id"])
    assert delivered["resend_of"] == original and delivered["recipients"][0]["status"] == "delivered"

    status, problem = post(daemon, f"/api/queue/{body['id']}/resend")  # nothing failed this time
    assert status == 409 and "nothing to resend" in problem["detail"], problem
    refused = spool.run("queue", "resend", body["id"], ok=False)
    assert refused.returncode == 1 and "no recipient failed or expired" in refused.stderr, refused


def test_resend_with_the_daemon_down_is_sent_when_it_starts(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    (spool.data / "msgspool.toml").write_text("max_lifetime = 2.0\n")  # the relay is down: it expires soon
    spool.sendmail(tagged_message("two"), "-t")
    original = spool.only_id()
    daemon.start()
    spool.wait_until(lambda: spool.recipient_statuses(original) == ["expired"], "the message to expire", timeout=15)
    daemon.stop()
    out = spool.run("queue", "resend", original).stdout
    assert out.startswith(f"{original}: resent as ") and out.endswith(" to <rcpt@example.com>\n"), out
    resend = out.split()[3]
    assert spool.show(resend)["recipients"][0]["status"] == "queued"
    (spool.data / "msgspool.toml").write_text("")
    relay.start()
    daemon.start()
    spool.wait_until(lambda: received_tags(relay) == ["two"], "the resend to be sent once the daemon runs")
    assert spool.show(resend)["recipients"][0]["status"] == "delivered"
