"""`msgspool queue ...` through the CLI: the JSON contract of list/show, and hold / release / delete /
flush both through a running daemon (control socket) and straight on the spool (daemon down)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.daemon import Daemon, Spool, received_tags, tagged_message
from tests.support.sink import Sink

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
STATUSES = {"queued", "active", "deferred", "delivered", "failed", "held", "expired"}
MESSAGE_FIELDS = {"id", "sender", "size", "submitted_at", "folder", "recipients"}
RECIPIENT_FIELDS = {"address", "addrtype", "transport", "status", "attempts", "next_attempt_at", "last_reply"}
PROMPT = 5.0
FAR_TZ = {"TZ": "Pacific/Kiritimati"}  # UTC+14: local time would show up as a wrong timestamp


def parse_utc(value: str) -> float:
    assert ISO_UTC.match(value), f"not ISO 8601 UTC ending in Z: {value!r}"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def check_contract(obj: Any, before: float, after: float) -> None:
    assert isinstance(obj, dict)
    assert obj.keys() >= MESSAGE_FIELDS, f"missing {MESSAGE_FIELDS - obj.keys()}"
    assert isinstance(obj["id"], str) and obj["id"]
    assert isinstance(obj["sender"], str)
    assert isinstance(obj["size"], int) and obj["size"] > 0
    assert before - 1 <= parse_utc(obj["submitted_at"]) <= after + 1, obj["submitted_at"]
    assert obj["folder"] == "outbox"
    assert isinstance(obj["recipients"], list) and obj["recipients"]
    for r in obj["recipients"]:
        assert r.keys() >= RECIPIENT_FIELDS, f"missing {RECIPIENT_FIELDS - r.keys()}"
        assert r["addrtype"] == "SMTP"
        assert r["transport"] in (None, "smtp")  # None: not routed yet (sendmail leaves that to the daemon)
        assert r["status"] in STATUSES
        assert isinstance(r["attempts"], int)
        assert r["last_reply"] is None or isinstance(r["last_reply"], str)
        if r["next_attempt_at"] is not None:
            parse_utc(r["next_attempt_at"])


def test_queue_list_json_prints_one_contract_object_per_line_with_utc_times(spool: Spool, relay: Sink,
                                                                             daemon: Daemon) -> None:
    before = time.time()
    spool.sendmail(tagged_message("one"), "-f", "one@example.org", "a@example.com", "b@example.net")
    spool.sendmail(tagged_message("two"), "-f", "two@example.org", "c@example.com")
    after = time.time()

    result = spool.run("queue", "list", "--json", env=FAR_TZ)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    objects = [json.loads(line) for line in lines]  # each line is a whole JSON document
    for obj in objects:
        check_contract(obj, before, after)
    assert [o["sender"] for o in objects] == ["one@example.org", "two@example.org"]  # submission order
    assert [r["address"] for r in objects[0]["recipients"]] == ["a@example.com", "b@example.net"]
    first = objects[0]["recipients"][0]
    assert (first["status"], first["attempts"], first["last_reply"]) == ("queued", 0, None)
    assert before - 1 <= parse_utc(first["next_attempt_at"]) <= after + 1

    shown = json.loads(spool.run("queue", "show", objects[0]["id"], "--json", env=FAR_TZ).stdout)
    check_contract(shown, before, after)
    assert {k: shown[k] for k in MESSAGE_FIELDS} == {k: objects[0][k] for k in MESSAGE_FIELDS}

    # After a failed attempt (relay down): deferred, counted, with the reply and a future retry time.
    daemon.start()
    message_id = objects[1]["id"]
    spool.wait_until(lambda: spool.recipient_statuses(message_id) == ["deferred"], "a deferral")
    shown = json.loads(spool.run("queue", "show", message_id, "--json", env=FAR_TZ).stdout)
    check_contract(shown, before, after)
    [r] = shown["recipients"]
    assert r["transport"] == "smtp", r  # routed by the daemon
    assert r["last_reply"] and r["last_reply"][0] == "4", r
    assert parse_utc(r["next_attempt_at"]) > time.time()
    listed = {o["id"]: o for o in spool.queue()}
    assert listed[message_id]["recipients"] == shown["recipients"]


# -- hold / release / delete / flush, with the daemon running and with it down --------------------

MODES = ["daemon-running", "daemon-down"]


def operator(spool: Spool, daemon: Daemon, mode: str) -> Callable[..., Any]:
    """Run `msgspool queue ARGS`: through the running daemon, or with it stopped (then restarted)."""

    def op(*args: str) -> Any:
        if mode == "daemon-down":
            assert daemon.stop() == 0, daemon.log_tail()
        result = spool.run("queue", *args)
        if mode == "daemon-down":
            daemon.start()
        return result

    return op


def barrier(spool: Spool, relay: Sink, tag: str) -> None:
    """Send a control message and wait for it: the daemon is delivering, and has had its chance."""
    n = relay.count()
    spool.sendmail(tagged_message(tag), "-t")
    spool.wait_for_sink(relay, n + 1, timeout=10.0)
    time.sleep(0.5)


@pytest.mark.parametrize("mode", MODES)
def test_held_message_is_never_sent_until_released(spool: Spool, relay: Sink, daemon: Daemon, mode: str) -> None:
    op = operator(spool, daemon, mode)
    daemon.start()
    spool.sendmail(tagged_message("held"), "-t")
    message_id = spool.only_id()
    spool.wait_until(lambda: spool.recipient_statuses(message_id) == ["deferred"], "a deferral (relay down)")

    assert op("hold", message_id).stdout == f"{message_id}: held\n"
    info = spool.show(message_id)
    assert info["held"] is True
    assert [r["status"] for r in info["recipients"]] == ["held"]

    relay.start()
    assert op("flush").returncode == 0
    assert op("flush", message_id).returncode == 0
    barrier(spool, relay, "control")
    assert received_tags(relay) == ["control"], daemon.log_tail()
    assert spool.recipient_statuses(message_id) == ["held"]

    assert op("release", message_id).stdout == f"{message_id}: released\n"
    spool.wait_for_sink(relay, 2, timeout=PROMPT)
    assert received_tags(relay) == ["control", "held"]
    spool.wait_until(lambda: spool.queue() == [], "the released message to leave the outbox")


@pytest.mark.parametrize("mode", MODES)
def test_deleted_message_is_gone_and_never_sent(spool: Spool, relay: Sink, daemon: Daemon, mode: str) -> None:
    op = operator(spool, daemon, mode)
    daemon.start()
    spool.sendmail(tagged_message("doomed"), "-t")
    message_id = spool.only_id()
    spool.wait_until(lambda: spool.recipient_statuses(message_id) == ["deferred"], "a deferral (relay down)")

    assert op("delete", message_id).stdout == f"{message_id}: deleted\n"
    assert spool.queue() == []
    gone = spool.run("queue", "show", message_id, ok=False)
    assert gone.returncode == 1 and message_id in gone.stderr

    relay.start()
    assert op("flush").returncode == 0
    barrier(spool, relay, "control")
    assert received_tags(relay) == ["control"], daemon.log_tail()


@pytest.mark.parametrize("mode", MODES)
def test_flush_of_deferred_message_makes_a_new_attempt_now(spool: Spool, relay: Sink, daemon: Daemon,
                                                           mode: str) -> None:
    """A message-level temporary failure (450) is retried after min_backoff (minutes); flush retries now."""
    op = operator(spool, daemon, mode)
    relay.start()
    daemon.start()
    spool.sendmail(tagged_message("busy", to="fail4xx-busy@example.com"), "-t")
    message_id = spool.only_id()

    def attempts() -> int:
        [r] = spool.show(message_id)["recipients"]
        return int(r["attempts"]) if r["status"] == "deferred" else -1

    spool.wait_until(lambda: attempts() == 1, "the first attempt to be deferred")
    [r] = spool.show(message_id)["recipients"]
    assert r["last_reply"].startswith("450 4.2.1"), r
    assert parse_utc(r["next_attempt_at"]) > time.time() + 60, "the retry is not minutes away: flush proves nothing"

    assert op("flush", message_id).stdout == "1 recipients due now\n"
    spool.wait_until(lambda: attempts() == 2, "a second attempt after `queue flush ID`", timeout=PROMPT)
    assert op("flush").stdout == "1 recipients due now\n"
    spool.wait_until(lambda: attempts() == 3, "a third attempt after `queue flush`", timeout=PROMPT)
    assert relay.count() == 0


def test_delete_and_hold_of_a_message_in_flight_say_unable_to_abort(spool: Spool, relay: Sink,
                                                                    daemon: Daemon) -> None:
    """Issue 10.5 through the daemon's delivery process: `queue delete` and `queue hold` of a
    message in a transaction exit 1 saying so, POST .../delete answers 409 problem+json, and the
    message is delivered once, as the transport had it."""
    import urllib.error
    import urllib.request

    relay.data_gate = threading.Event()  # the transaction waits at the end of data until the checks are done
    relay.start()
    daemon.start()
    spool.sendmail(tagged_message("inflight"), "-t")
    message_id = spool.only_id()
    spool.wait_until(lambda: relay.in_data > 0, "the transaction to start")  # the sink holds its reply
    deleted = spool.run("queue", "delete", message_id, ok=False)
    assert deleted.returncode == 1, deleted
    assert "unable to abort: in flight" in deleted.stdout and "<rcpt@example.com>" in deleted.stdout, deleted
    held = spool.run("queue", "hold", message_id, ok=False)
    assert held.returncode == 1 and "unable to hold: in flight" in held.stdout, held
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/queue/{message_id}/delete",
                                     data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 409
    assert caught.value.headers["Content-Type"].startswith("application/problem+json")
    body = json.loads(caught.value.read())
    assert body["detail"] == "unable to abort: in flight" and body["in_flight"] == {message_id: ["rcpt@example.com"]}
    relay.data_gate.set()
    spool.wait_until(lambda: received_tags(relay) == ["inflight"], "the delivery the transport had", timeout=15)
    spool.wait_until(lambda: spool.queue() == [], "the message to finish")
    assert received_tags(relay) == ["inflight"]


def test_an_empty_queue_lists_as_nothing_in_json_and_says_so_in_text(spool: Spool, daemon: Daemon) -> None:
    """`queue list --json` on an empty queue prints nothing at all and exits 0 (a stream of
    objects with none in it: `jq`, `wc -l` and `while read` see zero messages); the text form says so."""
    daemon.start()
    for args in (("queue", "list", "--json"), ("queue", "list", "--json", "--all")):
        result = spool.run(*args)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert spool.run("queue", "list").stdout == "Mail queue is empty\n"
    spool.sendmail(tagged_message("one"), "-f", "one@example.org", "a@example.com")
    assert len(spool.run("queue", "list", "--json").stdout.splitlines()) == 1
    assert spool.run("queue", "list").stdout.endswith("-- 1 messages\n")


def test_queue_list_where_searches_with_the_selector_and_refuses_a_bad_term(spool: Spool, daemon: Daemon) -> None:
    """`queue list --where`: the terms of the HTTP search (domain/selector.py), a subject too; no
    match says so (and --json prints nothing); a bad term is exit 2 naming it. --newest-first
    turns the order around, with a selector or without."""
    daemon.start()
    spool.sendmail(b"Subject: Invoice 42\r\n\r\nx\r\n", "-f", "billing@shop.example", "a@example.com")
    spool.sendmail(b"Subject: hello\r\n\r\nx\r\n", "-f", "one@example.org", "b@example.com")
    found = [json.loads(line) for line in spool.run("queue", "list", "--json", "--where",
                                                     "subject=INVOICE,newer-than=1h").stdout.splitlines()]
    assert [(m["sender"], m["subject"]) for m in found] == [("billing@shop.example", "Invoice 42")]
    assert spool.run("queue", "list", "--where", "sender=@shop.example").stdout.endswith("-- 1 messages\n")
    assert spool.run("queue", "list", "--where", "older-than=1d").stdout == "No message matches older-than=1d\n"
    assert spool.run("queue", "list", "--json", "--where", "folder=inbox").stdout == ""
    def listed(*flags: str, field: str = "id") -> list[str]:
        return [json.loads(line)[field] for line in spool.run("queue", "list", "--json", *flags).stdout.splitlines()]

    oldest = listed()
    assert len(oldest) == 2 and listed("--newest-first") == oldest[::-1]
    assert listed("--newest-first", "--where", "recipient=@example.com", field="sender") == [
        "one@example.org", "billing@shop.example"]
    assert spool.run("queue", "list", "--newest-first", "--where", "older-than=1d").stdout == (
        "No message matches older-than=1d\n")
    bad = spool.run("queue", "list", "--where", "colour=blue", ok=False)
    assert bad.returncode == 2 and "'colour'" in bad.stderr
    bulk = spool.run("queue", "hold", "--where", "folder=inbox", ok=False)
    assert bulk.returncode == 2 and "outbox" in bulk.stderr
