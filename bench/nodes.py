"""Several nodes on one PostgreSQL spool (issue 11): N `msgspool serve` processes, each with its own
data directory and SMTP port, sharing one database; one recording sink. Not a timed test: it
prints what it measured.

    make nodes                                  # 3 nodes: 20 s healthy, then a kill -9 under load
    .venv/bin/python -m bench.nodes --quick     # seconds, same code paths (what the suite runs)
    .venv/bin/python -m bench.nodes --json FILE --nodes 3 --database-url postgresql://...

Each node gets CLIENTS_PER_NODE (``--clients``) SMTP clients submitting tagged messages (X-Bench-Id) without
pause; a client whose node is gone goes on at the next node (as behind a load balancer). A
message counts as acknowledged when its DATA got 250. The database is a fresh schema in the
given database (default MSGSPOOL_TEST_PG, else the local test database), dropped afterwards.

``healthy`` phase: all nodes up for a while, then the load stops and the spool drains. Every
            acknowledged message must arrive exactly once: no node may deliver what another has.
            Reported: aggregate accept rate, end-to-end rate, and the most SMTP sessions the nodes
            held open to the sink at once (their shared connection count), which must not pass
            destination_concurrency: each node opens its share of it (spooler/destinations.py).
``kill``    phase: the load runs again; one node's process group gets SIGKILL. Right then the
            spool is read: the recipients active under that node's leases are its in flight, the
            most that may arrive twice. Measured: the time until none of its leases is left
            (rescued by the survivors: at most lease time + one heartbeat) and until everything it
            had acknowledged has arrived. At the end: lost (must be 0), duplicated (at most its in
            flight), stuck (must be 0), and no message twice before the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import smtplib
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Group, free_port, log, msgspool_command, tree_pids, wait_port
from bench.sink import SinkProcess
from msgspool.config import Settings

CLIENTS_PER_NODE = 2
DEFAULT_URL = os.environ.get("MSGSPOOL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Results:
    nodes: int = 0
    lease_time: float = 0.0
    healthy_seconds: float = 0.0
    healthy_acknowledged: int = 0
    healthy_duplicated: int = 0
    healthy_lost: int = 0
    accept_rate: float = 0.0  # msg/s over all nodes
    e2e_rate: float = 0.0
    sink_connections_peak: int = 0
    destination_concurrency: int = 0  # the nodes' setting: the most connections they may open together
    per_node_acknowledged: list[int] = field(default_factory=list)
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    twice_before_the_kill: int = 0
    stuck: int = 0
    in_flight_at_kill: int = 0
    takeover_s: float = -1.0  # kill -> no lease of the killed node left
    caught_up_s: float = -1.0  # kill -> everything the killed node acknowledged has arrived


class Load:
    """CLIENTS_PER_NODE SMTP clients per node, tags never reused, failing over to the next node."""

    def __init__(self, ports: list[int], prefix: str, per_node: int = CLIENTS_PER_NODE) -> None:
        self.ports, self.prefix = ports, prefix
        self.acked: dict[str, int] = {}  # tag -> index of the node that said 250
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True)
                        for k in range(per_node * len(ports))]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _client(self, k: int) -> None:
        n, node = 0, k % len(self.ports)
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.ports[node], timeout=10) as smtp:
                    while not self.stop.is_set():
                        tag = f"{self.prefix}{k}-{n:06d}"
                        message = (f"From: load@example.org\r\nTo: {tag}@example.com\r\nSubject: nodes {tag}\r\n"
                                   f"X-Bench-Id: {tag}\r\n\r\nbody of {tag}\r\n")
                        smtp.sendmail("load@example.org", [f"{tag}@example.com"], message)
                        with self._lock:
                            self.acked[tag] = node
                        n += 1
            except (OSError, smtplib.SMTPException):
                n += 1  # that tag may or may not have been taken: never reuse it
                node = (node + 1) % len(self.ports)
                time.sleep(0.02)


class Spool:
    """The fresh schema all nodes share, read directly by the bench."""

    def __init__(self, base_url: str) -> None:
        import psycopg

        self.base_url = base_url
        self.schema = f"msgspool_nodes_{secrets.token_hex(4)}"
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        self.url = f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{self.schema}"
        self.conn = psycopg.connect(self.url, autocommit=True)

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def outbox(self) -> int:
        return int(self.one("SELECT count(*) FROM recipients WHERE status IN ('queued','active','deferred','held')"))

    def owners_of(self, pids: list[int]) -> list[str]:
        rows = self.conn.execute("SELECT owner FROM nodes WHERE pid = ANY(%s)", (pids,)).fetchall()
        return [r[0] for r in rows]

    def leases_of(self, owners: list[str]) -> int:
        return int(self.one("SELECT count(*) FROM recipients WHERE status = 'active' AND owner = ANY(%s)", (owners,)))

    def drop(self) -> None:
        import psycopg

        self.conn.close()
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


class Node:
    def __init__(self, index: int, workdir: Path, sink_port: int, url: str, config: str) -> None:
        self.index = index
        self.data = workdir / f"node{index}"
        self.data.mkdir()
        self.port = free_port()
        self.log_file = (workdir / f"node{index}.log").open("ab")
        config_path = workdir / f"node{index}.toml"
        config_path.write_text(config)
        self.argv = [*msgspool_command(), "serve", "--data", str(self.data), "--config", str(config_path),
                     "--smtp", f"127.0.0.1:{self.port}", "--http", "", "--relay", f"127.0.0.1:{sink_port}"]
        self.env = {**os.environ, "MSGSPOOL_STORE": "postgresql", "MSGSPOOL_DATABASE_URL": url}
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> Node:
        self.proc = Group.start(self.argv, stdout=self.log_file, stderr=self.log_file, env=self.env)
        wait_port(self.port, 60.0, self.proc, f"node {self.index}")
        return self

    def pids(self) -> list[int]:
        assert self.proc is not None
        return tree_pids(self.proc.pid)

    def kill(self) -> None:
        assert self.proc is not None
        Group.stop(self.proc, timeout=5.0, sig=9)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            Group.stop(self.proc, timeout=30.0)
            self.proc = None


def wait_drained(spool: Spool, sink: SinkProcess, acked: set[str], cap: float) -> None:
    end = time.monotonic() + cap
    while time.monotonic() < end and (spool.outbox() or not acked <= {m for _, m, _ in sink.records()}):
        time.sleep(0.1)


def phases(quick: bool) -> tuple[float, float, float]:
    """Seconds of healthy load, of load before the kill, and of the run after it."""
    return (4.0, 1.5, 8.0) if quick else (20.0, 5.0, 30.0)


def default_lease_time(quick: bool) -> float:
    """The nodes' lease_time: short for --quick, else the setting's default."""
    return 3.0 if quick else Settings().lease_time


def run(nodes: int, healthy: float, killed_after: float, after_kill: float, lease_time: float,
        workdir: Path, base_url: str, clients: int = CLIENTS_PER_NODE) -> Results:
    r = Results(nodes=nodes, lease_time=lease_time, destination_concurrency=Settings().destination_concurrency)
    spool = Spool(base_url)
    sink = SinkProcess(free_port(), workdir / "sink.log").start()
    config = f"lease_time = {lease_time}\n"
    cluster = [Node(i, workdir, sink.port, spool.url, config) for i in range(nodes)]
    try:
        for node in cluster:
            node.start()
        log(f"healthy phase: {nodes} nodes, {healthy:.0f} s of load")
        load = Load([n.port for n in cluster], "h", clients).start()
        t0 = time.time()
        time.sleep(healthy)
        load.join()
        r.healthy_seconds = time.time() - t0
        acked = set(load.acked)
        wait_drained(spool, sink, acked, 120)
        records = [(t, m) for t, m, _ in sink.records() if m.startswith("h")]
        arrivals = Counter(m for _, m in records)
        r.healthy_acknowledged = len(acked)
        r.healthy_duplicated = sum(n - 1 for n in arrivals.values() if n > 1)
        r.healthy_lost = len(acked - arrivals.keys())
        r.accept_rate = len(acked) / r.healthy_seconds
        if len(records) > 1:
            first, last = min(t for t, _ in records), max(t for t, _ in records)
            r.e2e_rate = len(records) / max(last - t0, 1e-9) if last > first else 0.0
        r.sink_connections_peak = sink.peak(t0, time.time())
        r.per_node_acknowledged = [sum(1 for n in load.acked.values() if n == i) for i in range(nodes)]

        log(f"kill phase: node 0 gets SIGKILL after {killed_after:.1f} s of load")
        load = Load([n.port for n in cluster], "k", clients).start()
        time.sleep(killed_after)
        victim = cluster[0]
        owners = spool.owners_of(victim.pids())
        victim.kill()
        killed_at = time.time()
        r.in_flight_at_kill = spool.leases_of(owners)
        with load._lock:
            acked_by_victim = {tag for tag, n in load.acked.items() if n == 0}
        while r.takeover_s < 0 or r.caught_up_s < 0:
            now = time.time()
            if r.takeover_s < 0 and spool.leases_of(owners) == 0:
                r.takeover_s = now - killed_at
            if r.caught_up_s < 0 and acked_by_victim <= {m for _, m, _ in sink.records()}:
                r.caught_up_s = now - killed_at
            if now - killed_at > max(60.0, 6 * lease_time):
                break
            time.sleep(0.02)
        time.sleep(max(0.0, after_kill - (time.time() - killed_at)))
        load.join()
        acked = set(load.acked)
        wait_drained(spool, sink, acked, 120)
        records = [(t, m) for t, m, _ in sink.records() if m.startswith("k")]
        arrivals = Counter(m for _, m in records)
        seen: set[str] = set()
        for when, m in sorted(records):
            if m in seen and when < killed_at:
                r.twice_before_the_kill += 1
            seen.add(m)
        r.acknowledged = len(acked)
        r.lost = len(acked - arrivals.keys())
        r.duplicated = sum(n - 1 for n in arrivals.values() if n > 1)
        r.stuck = spool.outbox()
    finally:
        for node in cluster:
            node.stop()
        sink.stop()
        spool.drop()
    return r


def report(r: Results) -> str:
    rows = [
        ("nodes on one PostgreSQL spool", f"{r.nodes} (lease_time {r.lease_time:g} s)"),
        ("healthy: acknowledged / duplicated / lost",
         f"{r.healthy_acknowledged} / {r.healthy_duplicated} / {r.healthy_lost}   target - / 0 / 0"),
        ("healthy: accepted per node", " ".join(str(n) for n in r.per_node_acknowledged)),
        ("healthy: aggregate accept rate", f"{r.accept_rate:.0f} msg/s"),
        ("healthy: end-to-end rate", f"{r.e2e_rate:.0f} msg/s"),
        ("healthy: most sink connections at once",
         f"{r.sink_connections_peak}   target <= destination_concurrency ({r.destination_concurrency})"),
        ("kill: in flight on the killed node", f"{r.in_flight_at_kill}"),
        ("kill: its leases taken over after", f"{r.takeover_s:.2f} s   target <= lease time + one heartbeat"),
        ("kill: all it acknowledged arrived after", f"{r.caught_up_s:.2f} s"),
        ("kill: acknowledged / lost / stuck", f"{r.acknowledged} / {r.lost} / {r.stuck}   target - / 0 / 0"),
        ("kill: duplicated", f"{r.duplicated}   target <= in flight ({r.in_flight_at_kill})"),
        ("kill: duplicated before the kill", f"{r.twice_before_the_kill}   target 0"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def ok(r: Results) -> bool:
    return (r.healthy_duplicated == 0 and r.healthy_lost == 0 and r.lost == 0 and r.stuck == 0
            and r.duplicated <= r.in_flight_at_kill and r.twice_before_the_kill == 0 and r.takeover_s >= 0
            and r.sink_connections_peak <= r.destination_concurrency)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.nodes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per phase, a short lease")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--clients", type=int, default=CLIENTS_PER_NODE, help="SMTP clients per node")
    ap.add_argument("--lease-time", type=float, default=None, help="the nodes' lease_time (default: theirs; quick 3)")
    ap.add_argument("--database-url", default=DEFAULT_URL, help="where the fresh schema is made")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", type=Path, help="keep the nodes' data and logs in this directory (made anew)")
    a = ap.parse_args(argv)
    healthy, killed_after, after_kill = phases(a.quick)
    lease_time = a.lease_time if a.lease_time is not None else default_lease_time(a.quick)
    with tempfile.TemporaryDirectory(prefix="msgspool-nodes-") as tmp:
        workdir = Path(tmp)
        if a.keep:
            a.keep.mkdir(parents=True)
            workdir = a.keep
        try:
            r = run(a.nodes, healthy, killed_after, after_kill, lease_time, workdir, a.database_url, a.clients)
        finally:
            Group.close()
    print(report(r))
    if a.json:
        a.json.write_text(json.dumps(asdict(r), indent=2))
    return 0 if ok(r) else 1


if __name__ == "__main__":
    raise SystemExit(main())
