"""The pipe transport as an operator sets it up: a [[transports]] table in msgspool.toml, `msgspool serve`,
mail in through `msgspool sendmail`, and a real command (a script written by the test) that files
each message; `queue show` and `status` say what happened."""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

from tests.support.daemon import DaemonFactory, Spool
from tests.support.sink import Sink

FILER = """\
import json, os, sys
rcpt = sys.argv[-1]
with open(os.environ["FILED"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "sender": os.environ["SENDER"], "stdin": sys.stdin.read()}) + "\\n")
if rcpt.startswith("busy@"):
    print("4.2.1 the ticket queue is paused")
    sys.exit(75)
"""


def test_serve_delivers_through_a_pipe_command_and_shows_its_outcome(
        spool: Spool, relay: Sink, daemons: DaemonFactory, tmp_path: Path) -> None:
    filer, filed = tmp_path / "filer.py", tmp_path / "filed.jsonl"
    filer.write_text(f"#!{sys.executable}\n{FILER}")
    filer.chmod(0o755)
    user = pwd.getpwuid(os.geteuid()).pw_name
    (spool.data / "msgspool.toml").write_text(f"""\
[[transports]]
name = "tickets"
type = "pipe"
domains = ["tickets.example"]
argv = ["{filer}", "-f", "${{sender}}", "${{recipient}}"]
flags = "RX"
user = "{user}"
environment = {{ FILED = "{filed}" }}
""")
    daemon = daemons(spool.data, relay.address)
    spool.daemon = daemon
    daemon.start()
    spool.sendmail("Subject: printer on fire\n\nPlease help.\n", "-f", "app@example.org", "new@tickets.example",
                   "busy@tickets.example")
    message_id = spool.only_id()

    def settled() -> dict[str, str] | None:
        statuses = {r["address"]: r for r in spool.show(message_id)["recipients"]}
        done = all(r["status"] in ("delivered", "deferred") for r in statuses.values())
        return statuses if done else None

    recipients = spool.wait_until(settled, "both recipients settled by the command")
    new, busy = recipients["new@tickets.example"], recipients["busy@tickets.example"]
    assert (new["status"], new["transport"]) == ("delivered", "tickets")
    assert new["relay"] == f"tickets[{filer}]" and new["last_reply"].startswith("250 2.0.0 delivered to command")
    assert (busy["status"], busy["last_reply"]) == ("deferred", "451 4.2.1 the ticket queue is paused (command"
                                                                f" {filer} exit 75)")
    runs = [json.loads(line) for line in filed.read_text().splitlines()]
    assert sorted(run["argv"][-1] for run in runs) == ["busy@tickets.example", "new@tickets.example"]
    first = next(run for run in runs if run["argv"][-1] == "new@tickets.example")
    assert first["argv"] == ["-f", "app@example.org", "new@tickets.example"] and first["sender"] == "app@example.org"
    assert first["stdin"].startswith("Return-Path: <app@example.org>\n") and "Please help.\n" in first["stdin"]
    rows = {row["name"]: row for row in spool.status()["transports"]}
    assert "tickets" in rows
