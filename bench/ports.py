"""Free loopback ports for processes started later (a sink, a daemon's --smtp and --http), shared
by the bench and the test suite.

A port is chosen before its user binds it, and the kernel may offer the same one again meanwhile:
seen, a daemon given its relay's port as its own, and (in CI, the bench beside the test suite) a
daemon's port taken first by another process. So the port is chosen here, not by a bind to port 0,
below the kernel's ephemeral range (32768-60999 by default), where no client socket and no
listener on port 0 ever lands; it is tried for a bind before it is handed out, and never handed out
twice by one process. MSGSPOOL_TEST_PORTS=LOW-HIGH gives a run a range of its own (`make test`
runs two at once); under pytest-xdist each worker takes only the ports of its residue, so two
workers never hand out the same one between its choice and its bind."""

from __future__ import annotations

import os
import random
import socket

_HANDED_OUT: set[int] = set()
_random = random.Random()


def _ports() -> range:
    low, _, high = os.environ.get("MSGSPOOL_TEST_PORTS", "10000-32767").partition("-")
    return range(int(low), int(high) + 1)


def _share() -> tuple[int, int]:
    """(this process's index, how many processes share the range)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return index % count, count


def free_port() -> int:
    """A free loopback port this process has not handed out before."""
    ports = _ports()
    index, count = _share()
    while True:
        port = _random.randrange(ports.start + index, ports.stop, count)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
