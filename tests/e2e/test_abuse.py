"""The abuse suite (bench/abuse.py, `make abuse`) in its --quick form: open DATA phases and an
idle flood from outside while a trusted session completes, slow-loris DATA cut at the deadline,
1,000 fuzzed sessions with no crash, stall, malformed reply or traceback. Figures are not gated
(CI does not gate on speed); the outcomes are."""

from __future__ import annotations

import json
import resource
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.daemon import Daemon, Spool, cli_env, port_open

REPO = Path(__file__).resolve().parents[2]


def test_the_quick_abuse_suite_leaves_the_listener_serving(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    argv = [sys.executable, "-m", "bench.abuse", "--quick", "--tls", "--data-timeout", "1", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=100, env=cli_env())
    context = f"\n--- stdout\n{proc.stdout}\n--- stderr (tail)\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, context
    r = json.loads(out.read_text())
    assert r["data_sessions"] == 5 and r["flood_greeted"] + r["flood_refused"] == r["flood_attempted"], context
    assert r["legit_trusted_ok"], context
    assert r["loris_reply"].startswith("421 4.4.2"), context
    assert r["fuzz_sessions"] == 1000 and r["fuzz_crashes"] == 0 and r["fuzz_stalls"] == 0, context
    assert r["fuzz_bad_replies"] == 0 and r["log_tracebacks"] == 0 and r["fuzz_after_ok"], context


def greeting_of(sock: socket.socket) -> bytes:
    """The first reply line, or b"" when the connection closes or stays silent for 5 s."""
    sock.settimeout(5)
    data = b""
    try:
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return b""
    return data


def test_when_the_daemon_runs_out_of_descriptors_new_clients_get_421_and_it_recovers(
        spool: Spool, daemon: Daemon) -> None:
    def low_limit() -> None:  # soft and hard: the daemon cannot raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    log = daemon.log_path.open("ab")
    proc = subprocess.Popen(daemon.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=cli_env(),
                            cwd=spool.data.parent, start_new_session=True, preexec_fn=low_limit)
    daemon.proc = proc  # killed at teardown whatever happens
    deadline = time.monotonic() + 15
    while not port_open(*daemon.smtp_address):
        assert proc.poll() is None and time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.02)
    held: list[socket.socket] = []
    greetings: list[bytes] = []
    try:
        for _ in range(100):  # from loopback, trusted: no connection limit applies, only descriptors
            sock = socket.create_connection(daemon.smtp_address, timeout=5)
            held.append(sock)
            greetings.append(greeting_of(sock))
        assert all(g.startswith((b"220 ", b"421 4.7.0 ")) for g in greetings), greetings
        assert greetings[0].startswith(b"220 ") and greetings[-1].startswith(b"421 4.7.0 "), daemon.log_tail()
        assert proc.poll() is None, daemon.log_tail()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # the daemon notices the closed sessions
    with smtplib.SMTP(*daemon.smtp_address, timeout=5) as client:
        assert client.sendmail("a@example.org", ["bob@localhost"], b"Subject: after\r\n\r\nhi\r\n") == {}
    assert "out of file descriptors" in daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log_tail()
    assert daemon.stop() == 0
