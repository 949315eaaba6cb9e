"""What a user sees when something is wrong (clear message on stderr, non-zero exit), and the status
table of `msgspool status --json`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import Daemon, Spool, describe, run_cli, tagged_message
from tests.support.sink import Sink

UNKNOWN = "01NOSUCHMESSAGE000"


@pytest.mark.parametrize("mode", ["daemon-running", "daemon-down"])
@pytest.mark.parametrize("action", ["show", "hold", "release", "delete", "flush"])
def test_unknown_message_id_is_a_clear_error_with_nonzero_exit(spool: Spool, relay: Sink, daemon: Daemon,
                                                              action: str, mode: str) -> None:
    spool.sendmail(tagged_message("bystander"), "-t")  # the spool exists and is not empty
    if mode == "daemon-running":
        daemon.start()
    result = spool.run("queue", action, UNKNOWN, ok=False)
    assert result.returncode == 1, describe(result) + spool.context()
    assert result.stderr.startswith("msgspool: ") and f"no message {UNKNOWN}" in result.stderr, describe(result)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert len(spool.queue()) == 1  # the bystander was not touched


def test_unknown_id_among_known_ones_changes_nothing(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    spool.sendmail(tagged_message("known"), "-t")
    known = spool.only_id()
    result = spool.run("queue", "hold", known, UNKNOWN, ok=False)
    assert result.returncode == 1 and f"no message {UNKNOWN}" in result.stderr, describe(result)
    assert spool.recipient_statuses(known) == ["queued"]


@pytest.mark.parametrize("command", [["queue", "list"], ["queue", "list", "--json"], ["status"], ["status", "--json"],
                                     ["queue", "show", UNKNOWN], ["queue", "hold", UNKNOWN], ["queue", "flush"],
                                     ["queue", "read", UNKNOWN], ["token", "list"], ["token", "revoke", "x"],
                                     ["user", "list"], ["user", "delete", "x"]])
def test_missing_spool_directory_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no-such-spool"
    result = run_cli(*command, data=missing)
    assert result.returncode != 0, describe(result)
    assert result.stderr.startswith("msgspool: ") and str(missing) in result.stderr, describe(result)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not missing.exists(), "a read-only command created the spool directory"


@pytest.mark.parametrize("args, message", [
    ([], "Subject: nobody\n\nhello\n"),
    (["-t"], "Subject: nobody\n\nhello\n"),
    (["-t"], "To: \nSubject: empty To\n\nhello\n"),
], ids=["no-args", "t-without-headers", "t-with-empty-to"])
def test_sendmail_without_recipients_exits_64(spool: Spool, args: list[str], message: str) -> None:
    spool.sendmail(tagged_message("bystander"), "-t")
    result = spool.run("sendmail", *args, stdin=message, ok=False)
    assert result.returncode == 64, describe(result)
    assert "no recipients" in result.stderr
    assert len(spool.queue()) == 1  # nothing was spooled


def test_status_json_shows_spooler_and_smtp_transport_with_destination_up_or_down(spool: Spool, relay: Sink,
                                                                                 daemon: Daemon) -> None:
    spool.sendmail(tagged_message("status-1"), "-t")
    table = spool.status()
    assert table["spooler"]["name"] == "spooler"
    assert table["spooler"]["status"] not in ("online", "running"), table  # no daemon
    assert table["queue"]["messages"] == 1 and table["queue"]["queued"] == 1, table
    smtp = {row["name"]: row for row in table["transports"]}["smtp"]
    assert smtp["addrtypes"] == ["SMTP"]

    daemon.start()

    def smtp_row() -> dict:  # type: ignore[type-arg]
        rows = {row["name"]: row for row in spool.status()["transports"]}
        return rows["smtp"]

    def destination(status: str) -> dict | None:  # type: ignore[type-arg]
        row = smtp_row()
        dests = {d["name"]: d for d in row["destinations"]}
        dest = dests.get(relay.address)
        return {"row": row, "dest": dest} if dest is not None and dest["status"] == status else None

    down = spool.wait_until(lambda: destination("down"), f"destination {relay.address} to be down")
    assert down["row"]["status"] == "failure"
    assert down["dest"]["last_error"] and down["dest"]["last_error"].startswith("4"), down
    table = spool.status()
    assert table["spooler"]["status"] == "online", table
    assert table["queue"]["deferred"] == 1, table

    relay.start()
    up = spool.wait_until(lambda: destination("up"), f"destination {relay.address} to come back up")
    assert up["row"]["status"] == "online"
    assert up["dest"]["last_error"] is None
    spool.wait_for_sink(relay, 1, timeout=5.0)
    spool.wait_until(lambda: spool.status()["queue"]["messages"] == 0, "an empty queue in the status table")
    table = spool.status()
    dest = {d["name"]: d for d in {r["name"]: r for r in table["transports"]}["smtp"]["destinations"]}[relay.address]
    assert dest["delivered"] >= 1, table

    assert daemon.stop() == 0
    assert spool.status()["spooler"]["status"] not in ("online", "running")
