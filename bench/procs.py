"""Processes of the bench: msgspool daemons, sinks, load tools — each in its own process group,
registered so that everything is killed at the end, whatever happens.

Also: waiting for a port, the resident memory of a process tree (from /proc), and the
peak RSS of a finished child (wait4)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.ports import free_port as free_port  # the rows take it from here

REPO = Path(__file__).resolve().parent.parent


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None,
              what: str = "", interval: float = 0.01) -> float:
    """Until something accepts on 127.0.0.1:port; returns time.time() of the first success."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or proc.args} exited {proc.returncode} before listening on {port}")
        if port_open(port):
            return time.time()
        time.sleep(interval)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s ({what})")


def wait_port_free(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while port_open(port):
        if time.monotonic() > end:
            raise RuntimeError(f"port {port} is still in use (another process listens there)")
        time.sleep(0.05)


def msgspool_command() -> list[str]:
    """MSGSPOOL_CMD, else the msgspool script beside this interpreter, else msgspool on PATH."""
    if os.environ.get("MSGSPOOL_CMD"):
        return shlex.split(os.environ["MSGSPOOL_CMD"])
    script = Path(sys.executable).parent / "msgspool"
    if script.exists():
        return [str(script)]
    found = shutil.which("msgspool")
    if found:
        return [found]
    return [sys.executable, "-m", "msgspool.cli"]


class Group:
    """Every process started by the bench; `close()` kills their process groups."""

    procs: list[subprocess.Popen[Any]] = []
    _lock = threading.Lock()

    @classmethod
    def start(cls, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), start_new_session=True, **kw)
        with cls._lock:
            cls.procs.append(proc)
        return proc

    @classmethod
    def stop(cls, proc: subprocess.Popen[Any], timeout: float = 30.0, sig: int = signal.SIGTERM) -> float:
        """Signal the process group, wait, SIGKILL whatever is left; returns the seconds it took."""
        t0 = time.monotonic()
        if proc.poll() is None:
            _killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"warning: {proc.args[:2]} ignored signal {sig} for {timeout}s; killing")
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        took = time.monotonic() - t0
        _killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group
        with cls._lock:
            if proc in cls.procs:
                cls.procs.remove(proc)
        return took

    @classmethod
    def close(cls) -> None:
        for proc in list(cls.procs):
            cls.stop(proc, timeout=10.0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# -- memory -------------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) for every process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def tree_pids(root: int) -> list[int]:
    """The root, its descendants, and anything else in its process group."""
    table = _proc_table()
    if root not in table:
        return []
    children: dict[int, list[int]] = {}
    for pid, (ppid, _pgid) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    seen |= {pid for pid, (_ppid, pgid) in table.items() if pgid == root}
    return sorted(seen)


def status_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> tuple[float, int]:
    """(VmRSS summed over the process tree in MB, number of processes)."""
    pids = tree_pids(root)
    return sum(status_kb(p) for p in pids) / 1024, len(pids)


class RSSSampler:
    """Samples a process tree's RSS in a thread; `.peak` in MB."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.peak, self.procs = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        rss, n = tree_rss_mb(self.root)
        if rss > self.peak:
            self.peak, self.procs = rss, n

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)


class HWMSampler:
    """The peak RSS (VmHWM, reset by exec) of a process tree, sampled every 20 ms in a thread."""

    def __init__(self, root: int, interval: float = 0.02) -> None:
        self.root, self.interval = root, interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HWMSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = sum(status_kb(p, "VmHWM") for p in tree_pids(self.root))
            self.peak_mb = max(self.peak_mb, kb / 1024)
            self._stop.wait(self.interval)


def wait_rusage(proc: subprocess.Popen[Any], timeout: float | None = None) -> tuple[int, float]:
    """Reap `proc` ourselves with wait4: (exit code, its peak RSS in MB). Kills it after `timeout`."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024
        if end is not None and time.monotonic() > end:
            _killpg(proc.pid, signal.SIGKILL)
            end = None
        time.sleep(0.02)


# -- msgspool -----------------------------------------------------------------------------------


STOP_TIMEOUT = 30.0  # seconds a daemon has for an orderly stop before the bench kills it


class Daemon:
    """`msgspool serve` on free loopback ports, relaying to `relay`, as a black box."""

    def __init__(self, data: Path, relay: str, name: str = "msgspool", config: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.data, self.relay, self.name, self.config = data, relay, name, config
        self.env = env or {}  # added to the environment, e.g. MSGSPOOL_STORE and MSGSPOOL_DATABASE_URL
        self.smtp_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen[Any] | None = None
        self.startup = 0.0
        self.log_path = data.parent / f"{data.name}-serve.log"

    def start(self, timeout: float = 300.0) -> Daemon:
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [*msgspool_command(), "serve", "--data", str(self.data), "--smtp", f"127.0.0.1:{self.smtp_port}",
                "--http", f"127.0.0.1:{self.http_port}", "--relay", self.relay]
        if self.config:  # TOML settings, e.g. the TLS row's certificates and outbound level
            config_path = self.data.parent / f"{self.data.name}.toml"
            config_path.write_text(self.config)
            argv += ["--config", str(config_path)]
        t0 = time.time()
        self.proc = Group.start(argv, stdout=subprocess.DEVNULL, stderr=self.log_path.open("ab"),
                                env={**os.environ, **self.env})
        try:  # the HTTP API opens after SMTP (daemon.py): both, or the first GET may be refused
            for port in (self.smtp_port, self.http_port):
                wait_port(port, timeout, self.proc, f"{self.name} msgspool serve")
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}; its log:\n{self.log_tail()}") from None
        self.startup = time.time() - t0
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> tuple[float, int]:
        return tree_rss_mb(self.pid)

    def status(self, timeout: float = 60.0) -> tuple[dict[str, Any], float]:
        """GET /api/status and how long it took."""
        import json

        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/api/status", timeout=timeout) as r:
                body = json.loads(r.read())
        except OSError as err:  # what the daemon said is the clue (a CI run once found its port refused)
            raise OSError(f"GET /api/status of {self.name}: {err}; its log:\n{self.log_tail()}") from err
        return body, time.monotonic() - t0

    def destination(self, nexthop: str) -> dict[str, Any] | None:
        try:
            body, _ = self.status(10.0)
        except OSError:
            return None
        for transport in body.get("transports", []):
            for dest in transport.get("destinations", []):
                if dest.get("name") == nexthop:
                    return dict(dest)
        return None

    def stop(self) -> float:
        if self.proc is None:
            return 0.0
        proc, self.proc = self.proc, None
        took = Group.stop(proc, timeout=STOP_TIMEOUT)
        if took >= STOP_TIMEOUT:  # killed: what it was doing meanwhile is in its log
            log(f"{self.name} msgspool serve, its log:\n{self.log_tail()}")
        return took

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
