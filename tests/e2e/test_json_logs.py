"""`log_format = "json"` (issue 13.6): a real daemon's log, both processes', read line by line as
JSON — the delivery line with the fields of the Postfix-style line, every other record with time,
level, logger and message."""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tests.support.daemon import Daemon, Spool
from tests.support.sink import Sink


def wait_until(check: Callable[[], bool], daemon: Daemon, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out" + daemon.log_tail()
        time.sleep(0.05)


def json_lines(daemon: Daemon) -> list[dict[str, Any]]:
    entries = []
    for line in daemon.log().splitlines():
        if line.startswith("===== start #"):  # the test harness's own line
            continue
        entry = json.loads(line)  # every line the daemon wrote: a JSON object, nothing else
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
        entries.append(entry)
    return entries


def test_json_log_has_one_object_per_line_and_the_delivery_line_fields(
        spool: Spool, relay: Sink, daemon: Daemon) -> None:
    (spool.data / "msgspool.toml").write_text('log_format = "json"\n')
    relay.start()
    daemon.start()
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.org")
        for rcpt in ("bob@example.net", "fail5xx-carol@example.net"):  # the relay refuses carol at delivery
            assert smtp.rcpt(rcpt)[0] == 250
        code, reply = smtp.data(b"Subject: json\r\n\r\nhello\r\n")
    assert code == 250, reply
    queue_id = reply.decode().rsplit(" ", 1)[-1]
    spool.wait_for_sink(relay, 1)
    wait_until(lambda: sum(f'"queue_id": "{queue_id}"' in line for line in daemon.log().splitlines()) == 2, daemon)
    assert daemon.stop() == 0, daemon.log_tail()

    entries = json_lines(daemon)
    # (the non-delivery report to alice may have gone out too: a message, and a line, of its own)
    deliveries = {e["recipient"]: e for e in entries if e.get("queue_id") == queue_id}
    assert set(deliveries) == {"bob@example.net", "fail5xx-carol@example.net"}, daemon.log_tail()
    sent, bounced = deliveries["bob@example.net"], deliveries["fail5xx-carol@example.net"]
    assert sent["status"] == "sent" and sent["dsn"].startswith("2.") and sent["reply"].startswith("250")
    assert bounced["status"] == "bounced" and bounced["dsn"].startswith("5.") and bounced["reply"].startswith("550")
    for entry in (sent, bounced):
        assert entry["logger"] == "msgspool.delivery" and entry["level"] == "info"
        assert relay.address.split(":")[0] in entry["relay"] and str(relay.port) in entry["relay"]
        assert isinstance(entry["delay"], float) and 0 <= entry["delay"] < 10
        parts = entry["delays"].split("/")
        assert len(parts) == 4 and all(float(p) >= 0 for p in parts)
        assert entry["queue_id"] == queue_id
        assert entry["message"].startswith(f"{entry['queue_id']}: to=<{entry['recipient']}>, relay=")
        assert f"delays={entry['delays']}" in entry["message"]
    pids = {e["pid"] for e in entries}
    assert len(pids) >= 2  # intake's lines and the delivery process's, in one format
    assert any(e["logger"] == "msgspool" and "ready" in e["message"] for e in entries)


def test_a_reload_keeps_the_log_format_of_the_start(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    config = spool.data / "msgspool.toml"
    config.write_text('log_format = "json"\n')
    relay.start()
    daemon.start()
    config.write_text('log_format = "text"\n')
    assert "reloaded" in spool.run("reload").stdout  # the delivery process is replaced by a new one
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as smtp:
        smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: after\r\n\r\nhello\r\n")
    spool.wait_for_sink(relay, 1)
    wait_until(lambda: '"queue_id"' in daemon.log(), daemon)
    assert daemon.stop() == 0, daemon.log_tail()
    entries = json_lines(daemon)  # the new delivery process's lines too
    assert any("log_format can only change with a restart" in e["message"] for e in entries)
    children = [int(e["message"].split()[2]) for e in entries if e["message"].startswith("delivery process ")
                and e["message"].endswith(" started")]
    [line] = [e for e in entries if "queue_id" in e]
    assert len(children) == 2 and line["pid"] == children[1], daemon.log_tail()  # the one started by the reload
