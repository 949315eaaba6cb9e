"""A full disk, for real: the spool on an 8 MB tmpfs, every free byte taken by one file. Each way
in refuses with its temporary "no room" answer — SMTP ``452 4.3.1``, HTTP ``507`` problem+json,
`sendmail` exit 75 — and nothing it acknowledged is lost: once the file is removed, every
acknowledged message reaches the relay within seconds, with no flush and no restart.

The filler leaves 1.5 MB, and messages are big (256 KB): the first few are accepted while the
disk fills under the daemon, then the space runs out in the middle of its work (commits of
submissions and of delivery outcomes alike). Every accepted message counts as acknowledged."""

from __future__ import annotations

import itertools
import json
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.daemon import Daemon, DaemonFactory, Spool, cli_env, received_tags, run_cli, tagged_message
from tests.support.sink import Sink
from tests.support.tmpfs import fill, small_tmpfs

BODY = "x" * 76 + "\n"
BIG = BODY * (256 * 1024 // len(BODY))
TRIES = 60  # 15 MB of messages: far more than an 8 MB file system holds
FLOWS_WITHIN = 15.0
LEFT = 1536 * 1024
T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small") as where:
        yield where


def big_message(tag: str) -> str:
    return tagged_message(tag) + BIG


def smtp_submit(daemon: Daemon, tag: str, *, declare_size: bool = True) -> tuple[int, str]:
    """(250, "") or the refusal as (code, "STAGE TEXT"): at MAIL (a declared SIZE that does not
    fit) or at the end of DATA. Without `declare_size` only the content tells the size."""
    content = big_message(tag).replace("\n", "\r\n").encode()
    with smtplib.SMTP(*daemon.smtp_address, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@example.org", [f"SIZE={len(content)}"] if declare_size else [])
        if code != 250:
            return code, f"MAIL {text.decode()}"
        code, text = client.rcpt("rcpt@example.com")
        assert code == 250, text
        code, text = client.data(content)
        return (250, "") if code == 250 else (code, f"DATA {text.decode()}")


def http_submit(daemon: Daemon, tag: str) -> tuple[int, str, str]:
    body = json.dumps({"sender": "alice@example.org", "recipients": ["rcpt@example.com"],
                       "content": big_message(tag)}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/messages", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get_content_type(), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get_content_type(), err.read().decode()


def until_refused(submit: Callable[[str], tuple[bool, T]], tags: Iterator[str], acknowledged: list[str]) -> T:
    """Submit (a new tag each time) until one is refused, and return that answer; `submit` says
    whether it was accepted. Accepted tags are acknowledged messages."""
    for _ in range(TRIES):
        tag = next(tags)
        accepted, answer = submit(tag)
        if not accepted:
            return answer
        acknowledged.append(tag)
    raise AssertionError(f"{TRIES} submissions of {len(BIG)} bytes all accepted on an 8 MB file system")


def test_a_full_disk_refuses_on_every_way_in_and_loses_nothing_acknowledged(
        small: Path, tmp_path: Path, relay: Sink, daemons: DaemonFactory) -> None:
    data = small / "spool"
    data.mkdir()
    spool = Spool(data)
    daemon = daemons(data, relay.address, log_path=tmp_path / "daemon.log")  # the log must not need the tmpfs
    spool.daemon = daemon
    relay.start()
    daemon.start()
    tags = (f"df{n}" for n in itertools.count())
    acknowledged: list[str] = []
    assert smtp_submit(daemon, next(tags)) == (250, "")
    acknowledged.append("df0")
    relay.wait_for(1)

    fill(small / "filler", leave=LEFT)  # room for a few messages: the disk fills under the daemon's feet

    def by_smtp(tag: str, declare_size: bool = True) -> tuple[bool, tuple[int, str]]:
        code, text = smtp_submit(daemon, tag, declare_size=declare_size)
        return code == 250, (code, text)

    def by_http(tag: str) -> tuple[bool, tuple[int, str, str]]:
        status, content_type, body = http_submit(daemon, tag)
        return status == 201, (status, content_type, body)

    def by_sendmail(tag: str) -> tuple[bool, str]:
        result = spool.run("sendmail", "rcpt@example.com", stdin=big_message(tag), ok=False)
        return result.returncode == 0, f"{result.returncode} {result.stderr.strip()}"

    code, text = until_refused(lambda tag: by_smtp(tag, declare_size=False), tags, acknowledged)
    assert len(acknowledged) > 1, "the 1.5 MB left took no message"
    assert (code, text.split(":")[0]) == (452, "DATA 4.3.1 Insufficient system storage"), text + daemon.log_tail()
    code, text = until_refused(by_smtp, tags, acknowledged)  # a declared SIZE that cannot fit: told at MAIL
    assert (code, text) == (452, "MAIL 4.3.1 Insufficient system storage"), text + daemon.log_tail()

    status, content_type, body = until_refused(by_http, tags, acknowledged)
    assert (status, content_type) == (507, "application/problem+json"), (status, body[:300], daemon.log_tail())
    problem = json.loads(body)
    assert problem["status"] == 507 and problem["detail"].startswith("452 4.3.1"), problem

    refused = until_refused(by_sendmail, tags, acknowledged)
    assert refused.startswith("75 msgspool sendmail: 452 4.3.1 Insufficient system storage"), refused
    assert daemon.running, daemon.log_tail()
    intake = {row["name"]: row for row in spool.status()["listeners"]}["sendmail"]  # the status table says so
    assert (intake["status"], intake["status_string"]) == ("failure", "452 4.3.1 Insufficient system storage"), intake

    (small / "filler").unlink()
    freed = time.monotonic()
    relay.wait_for(len(acknowledged), timeout=FLOWS_WITHIN)
    while any(r["status"] != "delivered" for m in spool.queue() for r in m["recipients"]):
        assert time.monotonic() - freed < FLOWS_WITHIN, (spool.queue(), daemon.log_tail())
        time.sleep(0.2)
    assert sorted(set(received_tags(relay))) == sorted(acknowledged)
    assert smtp_submit(daemon, "after") == (250, "")
    assert {row["name"]: row for row in spool.status()["listeners"]}["sendmail"]["status"] == "online"
    assert "Traceback" not in daemon.log(), daemon.log_tail(200)
    assert daemon.stop() == 0


def test_the_quick_disk_full_abuse_run_loses_nothing_and_leaves_nothing_stuck(tmp_path: Path) -> None:
    """bench/diskfull.py (`make abuse-disk`) in its --quick form, on a tmpfs of this test's own."""
    out = tmp_path / "diskfull.json"
    with small_tmpfs(tmp_path / "disk", "32m") as disk:
        argv = [sys.executable, "-m", "bench.diskfull", "--quick", "--dir", str(disk), "--json", str(out)]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, env=cli_env())
    context = f"\n--- stdout\n{proc.stdout}\n--- stderr (tail)\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, context
    r = json.loads(out.read_text())
    assert r["acknowledged"] > 0 and r["refused_452"] > 0 and r["other_errors"] == 0, context
    assert r["lost"] == 0 and r["stuck"] == 0 and r["daemon_alive"] and r["log_tracebacks"] == 0, context


def test_serve_on_a_full_disk_exits_75_saying_so(small: Path, tmp_path: Path) -> None:
    data = small / "spool"
    assert run_cli("sendmail", "--create", "rcpt@example.com", data=data, stdin=tagged_message("x"),
                   cwd=tmp_path).returncode == 0
    fill(small / "filler")
    result = run_cli("serve", "--smtp", "127.0.0.1:0", "--http", "", data=data, cwd=tmp_path, timeout=30)
    assert result.returncode == 75, result.stderr
    assert "msgspool: 452 4.3.1 Insufficient system storage" in result.stderr
    assert "Traceback" not in result.stderr
