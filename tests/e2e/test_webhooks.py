"""Webhooks from `msgspool serve` as a user runs it: two processes, msgspool.toml in the data
directory, a real receiver on loopback, kill -9 and restarts."""

from __future__ import annotations

import json
import smtplib
import time
from typing import Any

from msgspool.domain.webhooks import verify
from tests.support.daemon import Daemon, Spool, run_cli
from tests.support.receiver import Post, Receiver

SECRET = "e2e-secret"
MAIL = "From: a@example.org\r\nTo: you@localhost\r\nSubject: hi\r\n\r\nHello.\r\n"


def configure(spool: Spool, receiver: Receiver, types: list[str]) -> None:
    (spool.data / "msgspool.toml").write_text(
        f'[[webhooks]]\nurl = "{receiver.url()}"\nsecret = "{SECRET}"\ntypes = {json.dumps(types)}\n')


def send_smtp(daemon: Daemon, to: str = "you@localhost") -> None:
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as client:
        client.sendmail("a@example.org", [to], MAIL)


def webhook_entries(spool: Spool, *, all_folders: bool = True) -> list[dict[str, Any]]:
    result = spool.run("queue", "list", "--json", *(["--all"] if all_folders else []))
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return [m for m in messages if m["origin"] == "webhook"]


def deferred_webhooks(spool: Spool, count: int) -> list[dict[str, Any]]:
    """The deferred webhook deliveries in the outbox, once there are `count` of them."""
    deferred = [m for m in webhook_entries(spool, all_folders=False) if m["recipients"][0]["status"] == "deferred"]
    return deferred if len(deferred) >= count else []


def signed(post: Post) -> bool:
    return verify(SECRET, post.headers["X-Msgspool-Signature"], post.body, now=time.time())


def test_new_mail_reaches_the_webhook_within_a_second_or_two_from_smtp_and_sendmail(
        spool: Spool, daemon: Daemon, receiver: Receiver) -> None:
    receiver.start()
    configure(spool, receiver, ["new_mail"])
    daemon.start()
    send_smtp(daemon)
    receiver.wait_for(1, timeout=10)  # the delivery process's dispatcher runs now
    latencies = []
    sent = time.monotonic()
    send_smtp(daemon)  # filed by the intake process, which tells the delivery process over the link
    receiver.wait_for(2, timeout=10)
    latencies.append(time.monotonic() - sent)
    sent = time.monotonic()
    spool.sendmail("Subject: two\n\nvia sendmail\n", "-f", "a@example.org", "you@localhost")  # control socket
    posts = receiver.wait_for(3, timeout=10)
    latencies.append(time.monotonic() - sent)
    daemon.stop()
    assert [(p.event["type"], p.event["mailbox"]) for p in posts] == [("new_mail", "you@localhost")] * 3
    assert all(signed(p) for p in posts)
    # Well under the dispatcher's periodic check (5 s): it was told.
    assert max(latencies) < 3.0, f"new_mail took {latencies} s to reach the webhook"


def test_webhooks_queued_before_a_crash_are_posted_after_the_restart_and_only_once(
        spool: Spool, daemon: Daemon, receiver: Receiver) -> None:
    configure(spool, receiver, ["new_mail", "delivered"])
    daemon.start()
    send_smtp(daemon)
    waiting = spool.wait_until(lambda: deferred_webhooks(spool, 2),
                               "two webhook deliveries deferred while the receiver is down")
    assert {m["recipients"][0]["addrtype"] for m in waiting} == {"WEBHOOK"}
    daemon.kill()
    receiver.start()
    daemon.start()
    posts = receiver.wait_for(2, timeout=15)
    spool.wait_until(lambda: all(m["folder"] == "sent" for m in webhook_entries(spool)), "the deliveries to finish")
    daemon.stop()
    daemon.start()  # a second restart queues nothing again
    time.sleep(1.0)
    daemon.stop()
    assert sorted(p.event["type"] for p in receiver.received()) == ["delivered", "new_mail"]
    assert sorted(p.headers["X-Msgspool-Delivery"] for p in posts) == sorted(m["id"] for m in waiting)
    assert len(webhook_entries(spool)) == 2
    assert all(signed(p) for p in posts)


def test_a_bad_webhook_stops_serve_with_exit_status_2(spool: Spool) -> None:
    (spool.data / "msgspool.toml").write_text('[[webhooks]]\nurl = "mailto:x@example.org"\nsecret = "k"\n')
    result = run_cli("serve", data=spool.data, timeout=20)
    assert result.returncode == 2, result
    assert "url must be an http:// or https:// URL" in result.stderr
