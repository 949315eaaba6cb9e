"""Drive the real `msgspool` command line and daemon as subprocesses, the way a user runs them.

`run_cli(...)` runs one `msgspool` command and returns its CompletedProcess (text mode). `Daemon`
starts `msgspool serve` on free loopback ports, waits until its SMTP port accepts connections,
stops it with SIGTERM (or SIGKILL for crash tests), and keeps its stderr in a log file whose
tail goes into every assertion message. `DaemonFactory` (the `daemons` fixture) makes sure no
daemon outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.sink import free_port


def msgspool_command() -> list[str]:
    """The installed `msgspool` script next to this interpreter, else `python -m msgspool.cli`."""
    script = Path(sys.executable).parent / "msgspool"
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "msgspool.cli"]


def cli_env() -> dict[str, str]:
    """The caller's environment without MSGSPOOL_DATA, so only --data chooses the spool."""
    env = dict(os.environ)
    env.pop("MSGSPOOL_DATA", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, data: Path | None = None, stdin: str | bytes | None = None, timeout: float = 30.0,
            cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`msgspool ARGS... [--data DATA]`; stdin as given (an empty stdin when None); `env` adds variables."""
    argv = [*msgspool_command(), *args]
    if data is not None:
        argv += ["--data", str(data)]
    raw = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    proc = subprocess.run(argv, input=raw, capture_output=True, timeout=timeout, env={**cli_env(), **(env or {})},
                          cwd=cwd or (data.parent if data is not None else None))
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def describe(result: subprocess.CompletedProcess[str]) -> str:
    cmd = " ".join(str(a) for a in result.args)
    return f"`{cmd}` exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def post(daemon: Daemon, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """POST `body` (default {}) as JSON to the daemon's HTTP API: the status and the JSON answer,
    an error's problem+json too (urllib's HTTPError is turned into its status and body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{path}", method="POST",
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Daemon:
    """One `msgspool serve` subprocess on free loopback ports; restartable on the same ports."""

    def __init__(self, data: Path, relay: str | None, *, log_path: Path | None = None, verbose: bool = True,
                 extra_args: Sequence[str] = ()) -> None:
        self.data = data
        self.relay = relay
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.log_path = log_path or data.parent / f"daemon-{self.smtp_port}.log"
        self.verbose = verbose
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def smtp_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.smtp_port)

    def argv(self) -> list[str]:
        argv = [*msgspool_command(), "serve", "--data", str(self.data), "--smtp", f"127.0.0.1:{self.smtp_port}",
                "--http", f"127.0.0.1:{self.http_port}"]
        if self.relay:
            argv += ["--relay", self.relay]
        if self.verbose:
            argv.append("-v")
        return argv + self.extra_args

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0, *, also: Sequence[int] = ()) -> Daemon:
        """Start, and return once the SMTP port accepts connections — and the loopback ports
        `also` (listeners the daemon binds after it, such as submission_listen's)."""
        assert not self.running, "daemon already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"===== start #{self.starts}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=cli_env(), cwd=self.data.parent, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"msgspool serve exited {self.proc.returncode} while starting"
                                     + self.log_tail())
            if port_open(*self.smtp_address) and all(port_open("127.0.0.1", port) for port in also):
                return self
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"msgspool serve did not accept SMTP connections within {timeout}s" + self.log_tail())

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; a daemon that does not stop in time is killed and the test fails."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"msgspool serve ignored SIGTERM for {timeout}s" + self.log_tail()) from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"\n--- msgspool serve log ({self.log_path}):\n{tail}"


class DaemonFactory:
    """Makes daemons for one test and kills whatever still runs at teardown."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []

    def __call__(self, data: Path, relay: str | None, **kw: Any) -> Daemon:
        daemon = Daemon(data, relay, **kw)
        self.daemons.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.kill()


class Spool:
    """The CLI's view of one spool directory; `daemon` (if any) only adds its log to failures."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.daemon: Daemon | None = None

    def context(self) -> str:
        return self.daemon.log_tail() if self.daemon is not None else ""

    def run(self, *args: str, stdin: str | bytes | None = None, ok: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = run_cli(*args, data=self.data, stdin=stdin, env=env)
        if ok:
            assert result.returncode == 0, describe(result) + self.context()
        return result

    def sendmail(self, message: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`msgspool sendmail --create ARGS` (tests start from an empty data directory)."""
        return self.run("sendmail", "--create", *args, stdin=message)

    def queue(self) -> list[dict[str, Any]]:
        result = self.run("queue", "list", "--json")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def show(self, message_id: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.run("queue", "show", message_id, "--json").stdout)
        return info

    def status(self) -> dict[str, Any]:
        table: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return table

    def only_id(self) -> str:
        messages = self.queue()
        assert len(messages) == 1, f"expected one queued message, got {messages}" + self.context()
        return str(messages[0]["id"])

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = 10.0,
                   interval: float = 0.05) -> Any:
        """Poll `predicate` until it returns something truthy; fail with `what` and the daemon log."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}" + self.context())
            time.sleep(interval)

    def wait_for_sink(self, sink: Any, n: int, timeout: float = 10.0) -> float:
        """`sink.wait_for(n)` with the daemon's log and the queue in the failure message."""
        try:
            return float(sink.wait_for(n, timeout))
        except AssertionError as err:
            queue = run_cli("queue", "list", data=self.data).stdout
            raise AssertionError(f"{err}\n--- msgspool queue list:\n{queue}" + self.context()) from None

    def recipient_statuses(self, message_id: str) -> list[str]:
        return [r["status"] for r in self.show(message_id)["recipients"]]


TAG_HEADER = "X-E2E-Tag"


def tagged_message(tag: str, to: str = "rcpt@example.com", sender: str = "alice@example.org",
                   newline: str = "\n") -> str:
    """A small message whose `X-E2E-Tag` header (and Subject) identifies it at the sink."""
    lines = [f"From: {sender}", f"To: {to}", f"Subject: e2e {tag}", f"{TAG_HEADER}: {tag}", "", f"body of {tag}", ""]
    return newline.join(lines)


def received_tags(sink: Any) -> list[str]:
    """The tags of every message the sink accepted, in arrival order (duplicates kept)."""
    with sink._lock:
        contents = [m.content for m in sink.messages]
    prefix = f"{TAG_HEADER}: ".encode()
    tags = []
    for content in contents:
        for line in content.split(b"\r\n"):
            if not line:
                break
            if line.startswith(prefix):
                tags.append(line[len(prefix):].decode())
                break
    return tags
