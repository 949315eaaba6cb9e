"""Chaos under load (issue 10): `msgspool serve` killed at random moments while SMTP clients keep
submitting, then only its delivery process killed. Not a timed test: it prints what it measured.

    make chaos                                   # 50 daemon kills, then 20 delivery-process kills
    .venv/bin/python -m bench.chaos --quick      # 5 and 3: seconds, same code paths
    .venv/bin/python -m bench.chaos --json FILE

Four clients submit tagged messages (X-Bench-Id) over SMTP without pause, reconnecting whenever
the daemon is gone; a message counts as acknowledged when its DATA got 250. The daemon relays to
the bench sink (bench/sink.py), which logs every arrival.

``daemon`` phase: each round the whole daemon (intake and delivery) gets SIGKILL 0.3-1.5 s after it
           started, and is started again at once. Right after each kill the spool is read: the
           recipients still `active` are those whose outcome was not recorded — the most that
           can arrive twice for that kill ("in flight").
``child``  phase: each round only the delivery process gets SIGKILL, 1-2 s apart, under the same
           load. Measured: the time until a new delivery process runs (its pid in `status`), the
           worst and p99 DATA latency in the 3 s after the kill, and what was in flight.

At the end the load stops, the outbox drains, and the sink's log is compared with what was
acknowledged: lost (acknowledged, never arrived; must be 0), duplicated (arrived more than once;
must be at most the in-flight total; each second arrival is counted against the last kill before
it, printed per kill beside what was in flight then, and none may come before the first kill),
stuck (still in the outbox; must be 0).
"""

from __future__ import annotations

import argparse
import json
import random
import smtplib
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Group, free_port, log, msgspool_command, wait_port
from bench.sink import SinkProcess

CLIENTS = 4


@dataclass
class Results:
    daemon_kills: int = 0
    child_kills: int = 0
    acknowledged: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    in_flight_daemon_kills: list[int] = field(default_factory=list)
    in_flight_child_kills: list[int] = field(default_factory=list)
    twice_daemon_kills: list[int] = field(default_factory=list)  # second arrivals after each kill
    twice_child_kills: list[int] = field(default_factory=list)
    twice_without_a_kill: int = 0  # second arrivals before the first kill: must be 0
    respawn_s: list[float] = field(default_factory=list)
    worst_data_after_child_kill_ms: float = 0.0
    p99_data_after_child_kill_ms: float = 0.0
    p99_data_steady_ms: float = 0.0


class Load:
    """CLIENTS SMTP sessions submitting tagged messages as fast as the daemon answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: set[str] = set()
        self.latencies: list[tuple[float, float]] = []  # (when DATA was sent, seconds to its 250)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(CLIENTS)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _client(self, k: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                    while not self.stop.is_set():
                        tag = f"c{k}-{n:06d}"
                        message = (f"From: load@example.org\r\nTo: {tag}@example.com\r\nSubject: chaos {tag}\r\n"
                                   f"X-Bench-Id: {tag}\r\n\r\nbody of {tag}\r\n")
                        started = time.monotonic()
                        smtp.sendmail("load@example.org", [f"{tag}@example.com"], message)
                        took = time.monotonic() - started
                        with self._lock:
                            self.acked.add(tag)
                            self.latencies.append((started, took))
                        n += 1
            except (OSError, smtplib.SMTPException):
                n += 1  # that tag may or may not have been taken: never reuse it
                time.sleep(0.02)


def active_in_spool(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'spool.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM recipients WHERE status = 'active'").fetchone()[0])
    finally:
        conn.close()


def outbox(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'spool.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM recipients WHERE status IN"
                                " ('queued','active','deferred','held')").fetchone()[0])
    finally:
        conn.close()


def delivery_pid(data: Path) -> int | None:
    from msgspool.spooler import control

    try:
        answer = control.request(data, {"op": "status"}, timeout=2.0)
    except (OSError, ValueError):
        return None
    if not answer or not answer.get("ok"):
        return None
    delivery = answer["status"]["spooler"].get("delivery")
    return delivery.get("pid") if isinstance(delivery, dict) else None


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def run(daemon_rounds: int, child_rounds: int, workdir: Path) -> Results:
    r = Results()
    data = workdir / "spool"
    data.mkdir()
    sink = SinkProcess(free_port(), workdir / "sink.log").start()
    port = free_port()
    argv = [*msgspool_command(), "serve", "--data", str(data), "--smtp", f"127.0.0.1:{port}", "--http", "",
            "--relay", f"127.0.0.1:{sink.port}"]
    log_file = (workdir / "daemon.log").open("ab")

    def start() -> subprocess.Popen[Any]:
        proc = Group.start(argv, stdout=log_file, stderr=log_file)
        wait_port(port, 30.0, proc, "msgspool serve", interval=0.005)
        return proc

    proc = start()
    load = Load(port).start()
    kills: list[tuple[str, float]] = []  # (which, wall time of the kill)
    try:
        log(f"daemon phase: {daemon_rounds} kills of the whole daemon under load")
        for _ in range(daemon_rounds):
            time.sleep(random.uniform(0.3, 1.5))
            Group.stop(proc, timeout=5.0, sig=9)
            kills.append(("daemon", time.time()))
            r.daemon_kills += 1
            r.in_flight_daemon_kills.append(active_in_spool(data))
            proc = start()
        log(f"child phase: {child_rounds} kills of the delivery process under load")
        windows: list[float] = []
        for _ in range(child_rounds):
            time.sleep(random.uniform(1.0, 2.0))
            end = time.monotonic() + 10
            while (child := delivery_pid(data)) is None and time.monotonic() < end:
                time.sleep(0.02)
            if child is None:
                raise RuntimeError("no delivery process to kill")
            killed_at = time.monotonic()
            subprocess.run(["kill", "-9", str(child)], check=False)
            kills.append(("child", time.time()))
            r.child_kills += 1
            r.in_flight_child_kills.append(active_in_spool(data))
            while delivery_pid(data) in (None, child):
                if time.monotonic() - killed_at > 30:
                    raise RuntimeError("the delivery process was not respawned within 30 s")
                time.sleep(0.005)
            r.respawn_s.append(time.monotonic() - killed_at)
            windows.append(killed_at)
        time.sleep(3.0)
    finally:
        load.join()
    with load._lock:
        latencies = list(load.latencies)
    after = [took for when, took in latencies if any(k <= when < k + 3.0 for k in windows)]
    steady = [took for when, took in latencies if not any(k - 0.5 <= when < k + 3.0 for k in windows)]
    r.worst_data_after_child_kill_ms = max(after, default=0.0) * 1000
    r.p99_data_after_child_kill_ms = p99(after) * 1000
    r.p99_data_steady_ms = p99(steady) * 1000
    r.acknowledged = len(load.acked)
    end = time.monotonic() + 60
    while time.monotonic() < end and (outbox(data) or not load.acked <= {m for _, m, _ in sink.records()}):
        time.sleep(0.2)
    arrivals = Counter(m for _, m, _ in sink.records())
    attribute_duplicates(r, sink.records(), kills)
    r.received = sum(arrivals.values())
    r.lost = len(load.acked - arrivals.keys())
    r.duplicated = sum(n - 1 for n in arrivals.values() if n > 1)
    r.stuck = outbox(data)
    Group.stop(proc, timeout=15.0)
    sink.stop()
    return r


def attribute_duplicates(r: Results, records: list[tuple[float, str, float | None]],
                         kills: list[tuple[str, float]]) -> None:
    """Each arrival of a message already seen is counted against the last kill before it."""
    seen: set[str] = set()
    per_kill = [0] * len(kills)
    for arrival, mid, _ in sorted(records):
        if mid not in seen:
            seen.add(mid)
            continue
        before = [i for i, (_, at) in enumerate(kills) if at <= arrival]
        if before:
            per_kill[before[-1]] += 1
        else:
            r.twice_without_a_kill += 1
    r.twice_daemon_kills = [n for (which, _), n in zip(kills, per_kill, strict=True) if which == "daemon"]
    r.twice_child_kills = [n for (which, _), n in zip(kills, per_kill, strict=True) if which == "child"]


def report(r: Results) -> str:
    in_flight = sum(r.in_flight_daemon_kills) + sum(r.in_flight_child_kills)
    rows = [
        ("daemon kills (SIGKILL of intake and delivery)", f"{r.daemon_kills}"),
        ("delivery-process kills", f"{r.child_kills}"),
        ("acknowledged (250 after DATA)", f"{r.acknowledged}"),
        ("lost (acknowledged, never arrived)", f"{r.lost}   target 0"),
        ("stuck in the outbox at the end", f"{r.stuck}   target 0"),
        ("duplicated", f"{r.duplicated}   target <= in flight ({in_flight})"),
        ("duplicated before any kill", f"{r.twice_without_a_kill}   target 0"),
        ("daemon kills: in flight / came twice",
         " ".join(f"{a}/{b}" for a, b in zip(r.in_flight_daemon_kills, r.twice_daemon_kills, strict=False)) or "-"),
        ("child kills: in flight / came twice",
         " ".join(f"{a}/{b}" for a, b in zip(r.in_flight_child_kills, r.twice_child_kills, strict=False)) or "-"),
        ("respawn of the delivery process, worst / median",
         f"{max(r.respawn_s, default=0):.3f} s / {statistics.median(r.respawn_s) if r.respawn_s else 0:.3f} s"
         "   target < 1 s"),
        ("DATA latency in the 3 s after a child kill, p99 / worst",
         f"{r.p99_data_after_child_kill_ms:.1f} ms / {r.worst_data_after_child_kill_ms:.1f} ms   target p99 < 100 ms"),
        ("DATA latency otherwise, p99", f"{r.p99_data_steady_ms:.1f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 daemon kills and 3 delivery-process kills")
    ap.add_argument("--daemon-kills", type=int)
    ap.add_argument("--child-kills", type=int)
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    daemon_rounds = a.daemon_kills if a.daemon_kills is not None else (5 if a.quick else 50)
    child_rounds = a.child_kills if a.child_kills is not None else (3 if a.quick else 20)
    with tempfile.TemporaryDirectory(prefix="msgspool-chaos-") as tmp:
        try:
            r = run(daemon_rounds, child_rounds, Path(tmp))
        finally:
            Group.close()
    print(report(r))
    if a.json:
        a.json.write_text(json.dumps(asdict(r), indent=2))
    in_flight = sum(r.in_flight_daemon_kills) + sum(r.in_flight_child_kills)
    ok = r.lost == 0 and r.stuck == 0 and r.duplicated <= in_flight and r.twice_without_a_kill == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
