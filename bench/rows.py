"""The measurements, one function per row of issue 5's table. Each returns a plain dict (the JSON
of the run); bench.run turns them into the printed table."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import smtpclient
from bench.load import Load, TLSFiles
from bench.procs import REPO, Daemon, Group, HWMSampler, RSSSampler, free_port, log, msgspool_command, wait_rusage
from bench.sink import SinkProcess

RELAY_BENCH = Path(os.environ.get("RELAY_BENCH", REPO.parent / "shared" / "bench" / "relay_bench.py"))
POSTFIX_SINK_PORT, POSTFIX_PORT = 2526, 2525  # relay_bench.py's Postfix: 2525 -> [127.0.0.1]:2526


@dataclass
class Context:
    quick: bool
    postfix: bool
    load_kind: str
    workdir: Path
    queued: int
    postfix_outage_cap: float
    notes: list[str] = field(default_factory=list)

    def sink_port(self) -> int:
        """Where Postfix relays when Postfix is in the row; any free port otherwise."""
        return POSTFIX_SINK_PORT if self.postfix else free_port()

    def tmpdir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))


def relay_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relay_bench", RELAY_BENCH)
    assert spec is not None and spec.loader is not None, RELAY_BENCH
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    global POSTFIX_SINK_PORT, POSTFIX_PORT
    POSTFIX_SINK_PORT, POSTFIX_PORT = module.SINK_PORT, module.POSTFIX_PORT
    return module


def ensure_postfix() -> None:
    """Postfix installed and configured as relay_bench.py does it (port 2525 relaying to 2526)."""
    relay_bench().ensure_postfix()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def relay_median(rows: list[float]) -> float:
    """relay_bench.py's median: sorted(...)[len // 2]."""
    return sorted(rows)[len(rows) // 2]


# -- rows 1 and 2 -------------------------------------------------------------------------------

LINE_RE = re.compile(r"^(postfix|msgspool)\s+accept\s+([\d.]+) msg/s\s+end-to-end\s+([\d.]+) msg/s", re.M)


def row_relay(ctx: Context, store_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`store_env`: the environment that puts msgspool on another store (MSGSPOOL_STORE, ...)."""
    msgs, rounds = (1000, 1) if ctx.quick else (10000, 2)
    if not ctx.postfix:
        return _relay_msgspool_only(ctx, 300 if ctx.quick else msgs, rounds, store_env or {})
    env = {**os.environ, **(store_env or {}), "MSGSPOOL_CMD": " ".join(msgspool_command())}
    argv = [sys.executable, str(RELAY_BENCH), "--msgs", str(msgs), "--rounds", str(rounds)]
    log("relay: " + " ".join(argv[1:]))
    t0 = time.monotonic()
    proc = Group.start(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    Group.stop(proc)
    for line in out.splitlines():
        log("  relay_bench | " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"relay_bench.py exited {proc.returncode}: {out[-500:]}")
    found: dict[str, list[tuple[float, float]]] = {"postfix": [], "msgspool": []}
    for name, acc, e2e in LINE_RE.findall(out):
        found[name].append((float(acc), float(e2e)))
    res: dict[str, Any] = {"source": "relay_bench.py", "msgs": msgs, "rounds": rounds, "seconds": time.monotonic() - t0,
                           "output": out.strip().splitlines()}
    for name, rows in found.items():
        if rows:
            res[name] = {"accept": relay_median([a for a, _ in rows]), "e2e": relay_median([e for _, e in rows]),
                         "rounds": rows}
    if "postfix" in res and "msgspool" in res:
        res["accept_ratio"] = res["msgspool"]["accept"] / res["postfix"]["accept"]
        res["e2e_ratio"] = res["msgspool"]["e2e"] / res["postfix"]["e2e"]
    return res


def _relay_msgspool_only(ctx: Context, msgs: int, rounds: int, store_env: dict[str, str]) -> dict[str, Any]:
    """No Postfix here: msgspool alone under this suite's load (no ratio)."""
    data = ctx.tmpdir("relay-")
    rows = []
    with Load(ctx.load_kind, ctx.workdir) as load:
        daemon = Daemon(data / "spool", load.address, env=store_env).start()
        try:
            for _ in range(rounds):
                r = load.measure(daemon.smtp_port, msgs)
                rows.append((r.accept, r.e2e))
        finally:
            daemon.stop()
    shutil.rmtree(data, ignore_errors=True)
    return {"source": f"own load ({ctx.load_kind})", "msgs": msgs, "rounds": rounds,
            "msgspool": {"accept": relay_median([a for a, _ in rows]), "e2e": relay_median([e for _, e in rows]),
                         "rounds": rows}}


def row_relay_pg(ctx: Context) -> dict[str, Any]:
    """The relay row with msgspool on the PostgreSQL store (one node; a fresh schema of the test
    database, MSGSPOOL_TEST_PG or the local one), against the same Postfix."""
    from bench.nodes import DEFAULT_URL, Spool

    spool = Spool(DEFAULT_URL)
    try:
        res = row_relay(ctx, {"MSGSPOOL_STORE": "postgresql", "MSGSPOOL_DATABASE_URL": spool.url})
    finally:
        spool.drop()
    res["database"] = DEFAULT_URL.rsplit("@", 1)[-1]
    return res


def row_nodes(ctx: Context) -> dict[str, Any]:
    """bench/nodes.py's run: three nodes on one PostgreSQL spool, healthy, then one killed -9."""
    from dataclasses import asdict

    from bench import nodes

    work = ctx.tmpdir("nodes-")
    r = nodes.run(3, *nodes.phases(ctx.quick), nodes.default_lease_time(ctx.quick), work, nodes.DEFAULT_URL)
    out = asdict(r)
    out["ok"] = nodes.ok(r)
    shutil.rmtree(work, ignore_errors=True)
    return out


def row_tls(ctx: Context) -> dict[str, Any]:
    """Relay with STARTTLS on both sides. The load client (this suite's Python one: smtp-source
    speaks no TLS) says STARTTLS to the relay's listener, which has a test CA's certificate, and the
    relay says STARTTLS to a bench.sink that offers it, refusing to send in clear: msgspool at
    smtp_tls_security_level = "encrypt", Postfix at its smtp_tls_security_level = encrypt with the
    same certificate for smtpd. The same msgspool relay in clear runs too (the cost of TLS). Rounds
    alternate clear / TLS / Postfix TLS; medians. Postfix gets relay_bench.py's configuration back
    afterwards."""
    msgs, rounds = (300, 1) if ctx.quick else (10000, 2)
    data = ctx.tmpdir("tls-")
    certs = TLSFiles.make(data)
    config = (f'tls_cert_file = "{certs.server_pem}"\ntls_key_file = "{certs.server_pem}"\n'
              f'smtp_tls_security_level = "encrypt"\n')
    found: dict[str, list[tuple[float, float]]] = {"plain": [], "tls": [], "postfix": []}
    encrypted: dict[str, tuple[int, int]] = {}
    with contextlib.ExitStack() as stack:
        plain_load = stack.enter_context(Load("python", ctx.workdir))
        tls_load = stack.enter_context(Load("python", ctx.workdir, tls=certs))
        runs: list[tuple[str, Load, int]] = []
        plain = Daemon(data / "plain", plain_load.address, name="plain").start()
        stack.callback(plain.stop)
        secure = Daemon(data / "tls", tls_load.address, name="tls", config=config).start()
        stack.callback(secure.stop)
        runs += [("plain", plain_load, plain.smtp_port), ("tls", tls_load, secure.smtp_port)]
        if ctx.postfix:
            stack.callback(ensure_postfix)  # relay_bench.py's plain configuration again
            _postfix_tls(certs)  # first: it loads relay_bench.py, which names the ports
            postfix_load = stack.enter_context(Load("python", ctx.workdir, port=POSTFIX_SINK_PORT, tls=certs))
            runs.append(("postfix", postfix_load, POSTFIX_PORT))
        for _ in range(rounds):
            for name, load, port in runs:
                r = load.measure(port, msgs)
                if r.errors:
                    raise RuntimeError(f"{name}: {r.errors} load errors (see the log above)")
                found[name].append((r.accept, r.e2e))
        for name, load, _port in runs:
            if name != "plain":
                assert load.python_sink is not None
                arrived = load.count()
                encrypted[name] = (load.python_sink.encrypted, arrived)
    shutil.rmtree(data, ignore_errors=True)
    res: dict[str, Any] = {"source": "own load (python, STARTTLS)", "msgs": msgs, "rounds": rounds,
                           "sink_encrypted": encrypted["tls"][0], "sink_arrived": encrypted["tls"][1]}
    if "postfix" in encrypted:
        res["postfix_sink_encrypted"], res["postfix_sink_arrived"] = encrypted["postfix"]
    for name, rows in found.items():
        if rows:
            res[name] = {"accept": relay_median([a for a, _ in rows]), "e2e": relay_median([e for _, e in rows]),
                         "rounds": rows}
    res["tls_cost"] = res["tls"]["e2e"] / res["plain"]["e2e"]
    if "postfix" in res:
        res["e2e_ratio"] = res["tls"]["e2e"] / res["postfix"]["e2e"]
        res["accept_ratio"] = res["tls"]["accept"] / res["postfix"]["accept"]
    return res


def _postfix_tls(certs: TLSFiles) -> None:
    """relay_bench.py's Postfix with TLS on both sides: smtpd offers STARTTLS with the bench's
    certificate, the smtp client refuses to relay in clear. Files are read before any chroot."""
    ensure_postfix()
    pem = str(certs.server_pem)
    subprocess.run(["postconf", "-e", f"smtpd_tls_cert_file = {pem}", f"smtpd_tls_key_file = {pem}",
                    "smtpd_tls_security_level = may", "smtp_tls_security_level = encrypt",
                    "smtpd_tls_protocols = >=TLSv1.2", "smtp_tls_protocols = >=TLSv1.2",
                    "smtp_tls_mandatory_protocols = >=TLSv1.2"], check=True, capture_output=True)
    subprocess.run(["postfix", "reload"], check=True, capture_output=True)
    time.sleep(1.0)  # the reload restarts the services as they next get work


# -- row 3 --------------------------------------------------------------------------------------


def row_latency(ctx: Context) -> dict[str, Any]:
    rate, seconds, warm = 50.0, (2.0 if ctx.quick else 20.0), 10
    count = int(rate * seconds)
    port = ctx.sink_port()
    data = ctx.tmpdir("latency-")
    sink = SinkProcess(port, data / "sink.log").start()
    res: dict[str, Any] = {"rate": rate, "messages": count, "warmup": warm}
    try:
        daemon = Daemon(data / "spool", f"127.0.0.1:{port}").start()
        try:
            res["msgspool"] = _paced(sink, daemon.smtp_port, rate, count, warm, "lat-msgspool")
        finally:
            daemon.stop()
        if ctx.postfix:
            res["postfix"] = _paced(sink, POSTFIX_PORT, rate, count, warm, "lat-postfix")
    finally:
        sink.stop()
        shutil.rmtree(data, ignore_errors=True)
    if "postfix" in res:
        res["p99_ratio"] = res["msgspool"]["p99_ms"] / res["postfix"]["p99_ms"]
    return res


def _paced(sink: SinkProcess, port: int, rate: float, count: int, warm: int, tag: str) -> dict[str, Any]:
    log(f"latency: {count} messages at {rate:.0f} msg/s into 127.0.0.1:{port} ({tag})")
    sent = smtpclient.run(smtpclient.paced("127.0.0.1", port, rate, warm + count, 1000, tag))
    wanted = {mid for mid in sent.sent if int(mid.rsplit("-", 1)[1]) >= warm}
    end = time.time() + 30
    while True:
        arrived = {mid: (arrival, stamp) for arrival, mid, stamp in sink.records() if mid in wanted}
        if len(arrived) >= len(wanted) or time.time() > end:
            break
        time.sleep(0.05)
    lat = [(arrival - stamp) * 1000 for arrival, stamp in arrived.values() if stamp is not None]
    accept = [a * 1000 for a in sent.accept[warm:]]
    forward = [(arrival - sent.acked[mid]) * 1000 for mid, (arrival, _) in arrived.items() if mid in sent.acked]
    return {"p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99), "max_ms": max(lat),
            "mean_ms": statistics.fmean(lat), "arrived": len(arrived), "sent": len(wanted),
            "accept_p50_ms": percentile(accept, 0.50), "accept_p99_ms": percentile(accept, 0.99),
            "forward_p50_ms": percentile(forward, 0.50), "forward_p99_ms": percentile(forward, 0.99),
            "client_late_ms": sent.late * 1000, "errors": sent.errors[:5]}


# -- row 4 --------------------------------------------------------------------------------------


def row_outage(ctx: Context) -> dict[str, Any]:
    n, down = 200, (1.0 if ctx.quick else 10.0)
    port = ctx.sink_port()
    data = ctx.tmpdir("outage-")
    res: dict[str, Any] = {"messages": n, "down_after_submit_s": down}
    try:
        daemon = Daemon(data / "spool", f"127.0.0.1:{port}").start()
        try:
            res["msgspool"] = _outage(data / "sink-msgspool.log", port, daemon.smtp_port, n, down,
                                      cap=30.0 if ctx.quick else 60.0, tag="out-msgspool", daemon=daemon)
        finally:
            daemon.stop()
        if ctx.postfix and ctx.postfix_outage_cap > 0:
            try:
                res["postfix"] = _outage(data / "sink-postfix.log", port, POSTFIX_PORT, n, down,
                                         cap=ctx.postfix_outage_cap, tag="out-postfix")
            finally:
                subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)  # its leftover backlog
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return res


def _outage(sink_log: Path, sink_port: int, smtp_port: int, n: int, down: float, cap: float, tag: str,
            daemon: Daemon | None = None) -> dict[str, Any]:
    log(f"outage: {n} messages into 127.0.0.1:{smtp_port} with the destination down ({tag})")
    from bench.procs import wait_port_free

    wait_port_free(sink_port)
    sent = smtpclient.run(smtpclient.blast("127.0.0.1", smtp_port, n, 10, 1000, tag=tag))
    if sent.accepted != n:
        raise RuntimeError(f"{tag}: only {sent.accepted}/{n} accepted: {sent.errors[:3]}")
    time.sleep(down)
    out: dict[str, Any] = {"accept_s": sent.finished - sent.started}
    if daemon is not None:
        out["destination_before"] = daemon.destination(f"127.0.0.1:{sink_port}")
    sink = SinkProcess(sink_port, sink_log).start()
    try:
        wanted = {f"{tag}-{i:09d}" for i in range(n)}
        seen: set[str] = set()
        total = 0
        while True:
            records = sink.records()
            total = len([r for r in records if r[1] in wanted])
            seen = {r[1] for r in records if r[1] in wanted}
            now = time.time()
            if len(seen) >= n or now - sink.up_at > cap:
                break
            time.sleep(0.01)
        last = max((r[0] for r in records if r[1] in wanted), default=sink.up_at)
        out.update({"arrived": len(seen), "duplicates": total - len(seen), "capped": len(seen) < n,
                    "seconds": (last - sink.up_at) if len(seen) >= n else cap,
                    "first_s": min((r[0] - sink.up_at for r in records if r[1] in wanted), default=None)})
    finally:
        sink.stop()
    log(f"outage: {tag}: {out['arrived']}/{n} in {out['seconds']:.2f} s after the destination came back")
    return out


# -- rows 5 and 6 -------------------------------------------------------------------------------


def row_queued(ctx: Context, with_load: bool = True, with_list: bool = True,
               with_backlog: bool = False, with_status: bool = True, with_search: bool = True) -> dict[str, Any]:
    from bench.prefill import prefill

    n = ctx.queued
    msgs, rounds = (300, 1) if ctx.quick else (10000, 2)
    data = ctx.tmpdir("queued-")
    res: dict[str, Any] = {"queued": n}
    try:
        log(f"queued: prefilling a spool with {n:,} deferred messages")
        res["prefill"] = prefill(data / "full", n, progress=log)
        with Load(ctx.load_kind, ctx.workdir) as load:
            empty = Daemon(data / "empty", load.address, "empty").start()
            full = Daemon(data / "full", load.address, "full").start()
            try:
                res["startup_s"] = {"empty": empty.startup, "full": full.startup}
                time.sleep(1.0 if ctx.quick else 3.0)  # let startup work (recovery, probes) settle
                res["rss_idle_mb"], res["procs"] = full.rss()
                res["rss_idle_empty_mb"] = empty.rss()[0]
                _, res["status_s"] = full.status(timeout=120)
                if with_status:
                    res["status"] = _status_timings(full, empty, n, runs=5 if ctx.quick else 20)
                if with_search:
                    res["search"] = _search_timings(full, n, runs=5 if ctx.quick else 20)
                if with_load:
                    res.update(_queued_load(ctx, load, empty, full, msgs, rounds))
                if with_list:
                    res["list"] = _queue_list(full.data, n, cap=60.0 if ctx.quick else 600.0)
                res["rss_after_mb"] = full.rss()[0]
                dest = full.destination("127.0.0.1:9")
                res["backlog_destination"] = dest
            finally:
                res["stop_s"] = {"full": full.stop(), "empty": empty.stop()}
            res["sink_total"] = load.count()  # fresh traffic only: no prefilled message may get here
            res["fresh_sent"] = 2 * msgs * rounds if with_load else 0
        if with_backlog:
            res["backlog"] = _backlog(ctx, data / "full", seconds=3.0 if ctx.quick else 60.0,
                                      settle=2.0 if ctx.quick else 10.0)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return res


def _queued_load(ctx: Context, load: Load, empty: Daemon, full: Daemon, msgs: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[float, float]]] = {"empty": [], "full": []}
    peak = 0.0
    for r in range(rounds):
        order = (("empty", empty), ("full", full))
        for name, daemon in order if r % 2 == 0 else order[::-1]:  # ABBA: drift hits both alike
            log(f"queued: round {r + 1}/{rounds}: {msgs} messages into the {name} spool's daemon")
            with RSSSampler(daemon.pid) as sampler:
                rates = load.measure(daemon.smtp_port, msgs)
            if name == "full":
                peak = max(peak, sampler.peak)
            runs[name].append((rates.accept, rates.e2e))
            log(f"queued: {name}: accept {rates.accept:.0f} msg/s, end-to-end {rates.e2e:.0f} msg/s,"
                f" peak RSS {sampler.peak:.0f} MB")
    e2e = {k: statistics.median([e for _, e in v]) for k, v in runs.items()}
    acc = {k: statistics.median([a for a, _ in v]) for k, v in runs.items()}
    return {"load": f"{msgs} msgs x 1000 B, 20 sessions, {load.kind}", "runs": runs, "e2e": e2e, "accept": acc,
            "e2e_ratio": e2e["full"] / e2e["empty"], "accept_ratio": acc["full"] / acc["empty"],
            "rss_peak_mb": peak}


def _status_timings(full: Daemon, empty: Daemon, expected: int, runs: int) -> dict[str, Any]:
    """GET /api/status and `msgspool status --json` on the prefilled spool (issue 13.7: <= 50 ms),
    each `runs` times after one warm-up. The CLI's wall time is mostly starting Python and its
    imports (~0.5 s on this machine), whatever the queue holds: the same command on the empty
    spool's daemon is timed beside it, and the difference is what the queue costs it."""
    log(f"status: GET /api/status and msgspool status --json, {runs} times each, {expected:,} queued")
    full.status(timeout=120)
    http, counted = [], []
    for _ in range(runs):
        body, seconds = full.status(timeout=120)
        http.append(seconds * 1000)
        counted.append(body["queue"]["messages"])

    def wall(daemon: Daemon) -> tuple[float, int]:
        argv = [*msgspool_command(), "status", "--json", "--data", str(daemon.data)]
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"msgspool status exited {proc.returncode}: {proc.stderr[-300:]}")
        return (time.monotonic() - t0) * 1000, json.loads(proc.stdout)["queue"]["messages"]

    wall(full)
    wall(empty)
    cli, cli_empty = [], []
    for _ in range(max(3, runs // 4)):
        ms, n = wall(full)
        cli.append(ms)
        counted.append(n)
        cli_empty.append(wall(empty)[0])
    res = {"http_ms": {"p50": statistics.median(http), "max": max(http), "runs": len(http)},
           "cli_ms": {"p50": statistics.median(cli), "max": max(cli), "runs": len(cli)},
           "cli_empty_ms": statistics.median(cli_empty), "queue_messages": sorted(set(counted))}
    res["cli_over_empty_ms"] = res["cli_ms"]["p50"] - res["cli_empty_ms"]
    log(f"status: HTTP p50 {res['http_ms']['p50']:.1f} ms, CLI p50 {res['cli_ms']['p50']:.0f} ms"
        f" ({res['cli_empty_ms']:.0f} ms on the empty spool), messages counted {res['queue_messages']}")
    return res


def search_cases(n: int) -> list[tuple[str, dict[str, str], int]]:
    """(name, GET /api/queue parameters, the least messages its page must hold) over the prefilled
    spool of `n` (bench.prefill: message i from sender{i % 1000}@sender.example to
    user{i}@deferred.example, Subject "deferred message {i}", submitted over the last two hours)."""
    last = n - 1
    return [
        ("first page", {}, 50),
        ("sender (1 in 1,000)", {"sender": "sender7@sender.example"}, min(50, n // 1000)),
        ("recipient (1 message)", {"recipient": f"user{last}@deferred.example"}, 1),
        ("sender domain", {"sender": "@sender.example"}, 50),
        ("destination", {"destination": "127.0.0.1:9"}, 50),
        ("status", {"status": "deferred"}, 50),
        ("older than 1h", {"older_than": "1h"}, 50),
        ("status + sender + newer than 1h", {"status": "deferred", "sender": "sender7@sender.example",
                                             "newer_than": "1h"}, 1),
        ("subject (bounded read)", {"subject": f"deferred message {last}"}, 0),
    ]


def _search_timings(full: Daemon, n: int, runs: int) -> dict[str, Any]:
    """GET /api/queue with a page of 50 on the prefilled spool, per search (issue 13.4: <= 50 ms),
    each `runs` times after one warm-up; and the next page through the first page's cursor."""
    import urllib.parse
    import urllib.request

    def get(query: dict[str, str]) -> tuple[list[Any], str | None, float]:
        url = f"http://127.0.0.1:{full.http_port}/api/queue?" + urllib.parse.urlencode({"limit": "50", **query})
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=120) as answer:
            body = json.loads(answer.read())
            cursor = answer.headers.get("Next-Cursor")
        return body, cursor, (time.monotonic() - t0) * 1000

    log(f"search: GET /api/queue, a page of 50, {runs} times per search, {n:,} queued")
    cases = search_cases(n)
    _, first_cursor, _ = get({})
    if first_cursor:
        cases.insert(1, ("next page (cursor)", {"cursor": first_cursor}, 50))
    out: dict[str, Any] = {}
    for name, query, least in cases:
        get(query)
        times, found, more = [], 0, False
        for _ in range(runs):
            body, cursor, ms = get(query)
            times.append(ms)
            found, more = len(body), cursor is not None
        out[name] = {"p50_ms": statistics.median(times), "max_ms": max(times), "found": found, "least": least,
                     "next_cursor": more, "query": query}
        log(f"search: {name}: p50 {out[name]['p50_ms']:.1f} ms (max {out[name]['max_ms']:.1f}), {found} on the page")
    return out


def _queue_list(data: Path, expected: int, cap: float) -> dict[str, Any]:
    """`msgspool queue list --json` over the full spool: first line, rate, total, the CLI's peak RSS."""
    log(f"list: msgspool queue list --json over {expected:,} messages (cap {cap:.0f} s)")
    argv = [*msgspool_command(), "queue", "list", "--json", "--data", str(data)]
    t0 = time.monotonic()
    proc = Group.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    # The CLI's own peak RSS: VmHWM of its process tree, sampled (wait4's ru_maxrss would also count
    # this bench process, whose pages the child shared between fork and exec).
    hwm = HWMSampler(proc.pid).start()
    first_s = None
    first: dict[str, Any] | None = None
    lines = 0
    partial = b""
    capped = False
    while True:
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        if first is None:
            partial += chunk
            if b"\n" in partial:
                first_s = time.monotonic() - t0
                first = json.loads(partial.split(b"\n", 1)[0])
        lines += chunk.count(b"\n")
        if time.monotonic() - t0 > cap:
            capped = True
            break
    elapsed = time.monotonic() - t0
    hwm.stop()
    code, _ = wait_rusage(proc, timeout=0.0 if capped else 30.0)
    maxrss = hwm.peak_mb
    stderr = proc.stderr.read().decode(errors="replace")[-300:] if proc.stderr and not capped else ""
    Group.stop(proc)
    rec = (first or {}).get("recipients") or [{}]
    return {"first_line_s": first_s, "lines": lines, "seconds": elapsed, "capped": capped, "exit": code,
            "rss_max_mb": maxrss, "lines_per_s": lines / elapsed if elapsed else 0.0,
            "first_status": rec[0].get("status"), "stderr": stderr}


def _backlog(ctx: Context, spool: Path, seconds: float, settle: float) -> dict[str, Any]:
    """Opt-in extra (``--only backlog``): the whole deferred backlog made due at once by
    `msgspool queue flush` while fresh traffic flows at 50 msg/s. Claimed recipients are routed
    again with the daemon's own configuration, so the backlog now drains to the --relay sink like
    the fresh traffic; what matters is what fresh traffic sees meanwhile (intake latency, whether
    it waits behind the whole backlog), the drain rate, and memory."""
    import threading

    port = free_port()
    sink = SinkProcess(port, spool.parent / "backlog-sink.log").start()
    daemon = Daemon(spool, f"127.0.0.1:{port}", "backlog").start()
    out: dict[str, Any] = {"seconds": seconds}
    try:
        sent: dict[str, Any] = {}
        client = threading.Thread(target=lambda: sent.update(r=smtpclient.run(smtpclient.paced(
            "127.0.0.1", daemon.smtp_port, 50.0, int(50 * seconds), 1000, "backlog"))))
        with RSSSampler(daemon.pid) as rss:
            client.start()
            time.sleep(2.0)
            t0 = time.monotonic()
            flush = subprocess.run([*msgspool_command(), "queue", "flush", "--data", str(spool)],
                                   capture_output=True, text=True, timeout=600)
            out["flush_s"] = time.monotonic() - t0
            out["flush_output"] = (flush.stdout + flush.stderr).strip()[-200:]
            log(f"backlog: queue flush took {out['flush_s']:.1f} s: {out['flush_output']}")
            client.join()
            time.sleep(settle)
        paced_result = sent["r"]
        records = sink.records()
        arrived = {mid: arrival for arrival, mid, _ in records}
        drained = [arrival for arrival, mid, _ in records if mid == "-"]  # prefilled: no X-Bench-Id
        fwd = [(arrived[m] - t) * 1000 for m, t in paced_result.sent.items() if m in arrived]
        accept = [a * 1000 for a in paced_result.accept]
        body, status_s = daemon.status(timeout=120)
        out.update({"drained": len(drained),
                    "drain_rate": len(drained) / (max(drained) - min(drained)) if len(drained) > 1 else 0.0,
                    "sent": len(paced_result.sent), "errors": len(paced_result.errors),
                    "arrived": len(fwd), "accept_p50_ms": percentile(accept, 0.5),
                    "accept_p99_ms": percentile(accept, 0.99), "accept_max_ms": max(accept),
                    "sink_p50_ms": percentile(fwd, 0.5) if fwd else None,
                    "rss_peak_mb": rss.peak, "queue_after": body.get("queue"), "status_s": status_s,
                    "log_errors": [line for line in daemon.log_tail(400).splitlines()
                                   if "Error" in line or "failed" in line][:5]})
    finally:
        daemon.stop()
        sink.stop()
    return out
