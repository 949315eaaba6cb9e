"""`python -m bench`: run the rows, print the table. See bench/__init__.py for what each row means."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import rows
from bench.load import tools_available
from bench.procs import Group, log, tree_pids

ROWS = ("relay", "tls", "latency", "outage", "queued", "list", "status", "search", "relay_pg", "nodes")
EXTRAS = ("backlog",)  # opt-in with --only: not part of issue 5's table
OTHER_BENCH = ("relay_bench.py", "smtp-source", "smtp-sink", "-m bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description="msgspool vs Postfix: issue 5's table")
    ap.add_argument("--quick", action="store_true", help="seconds, not minutes: small counts")
    ap.add_argument("--only", action="append", default=[], metavar="ROW",
                    help=f"run only these rows ({', '.join(ROWS)}; and the opt-in extra"
                         f" {', '.join(EXTRAS)}); repeatable or comma-separated")
    ap.add_argument("--no-postfix", action="store_true", help="msgspool only (no Postfix install or rows)")
    ap.add_argument("--load", choices=("auto", "tools", "python"), default="auto",
                    help="load generator for own rate rows: smtp-source/smtp-sink, or Python (auto: tools"
                         " unless --quick or not installed)")
    ap.add_argument("--queued", type=int, default=None, help="prefilled deferred messages (1,000,000; quick 20,000)")
    ap.add_argument("--postfix-outage-cap", type=float, default=None,
                    help="seconds to wait for Postfix after the outage (120; 0 skips it; quick 0)")
    ap.add_argument("--wait-quiet", type=float, default=None,
                    help="wait up to this long for another bench run on this machine to finish (900; quick 0)")
    ap.add_argument("--workdir", type=Path, default=None, help="where spools go (a temporary directory)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    a = ap.parse_args(argv)
    only = [r.strip() for item in a.only for r in item.split(",") if r.strip()]
    bad = [r for r in only if r not in ROWS + EXTRAS]
    if bad:
        ap.error(f"unknown row(s) {', '.join(bad)}; rows are {', '.join(ROWS + EXTRAS)}")
    a.rows = [r for r in ROWS if not only or r in only] + [r for r in EXTRAS if r in only]
    if a.queued is None:
        a.queued = 20_000 if a.quick else 1_000_000
    if a.postfix_outage_cap is None:
        a.postfix_outage_cap = 0.0 if a.quick else 120.0
    if a.wait_quiet is None:
        a.wait_quiet = 0.0 if a.quick else 900.0
    return a


def other_benches() -> list[str]:
    """Command lines of bench processes on this machine that are not ours."""
    mine = set(tree_pids(os.getpid())) | {os.getpid(), os.getppid()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(marker in cmd for marker in OTHER_BENCH) and "grep" not in cmd:
            found.append(f"{entry}: {cmd[:120]}")
    return found


def wait_quiet(limit: float, notes: list[str]) -> None:
    if limit <= 0:
        return
    t0 = time.monotonic()
    while (others := other_benches()) and time.monotonic() - t0 < limit:
        if int(time.monotonic() - t0) % 30 == 0:
            log(f"waiting for another benchmark on this machine to finish: {others[0]}")
        time.sleep(1.0)
    waited = time.monotonic() - t0
    if others:
        notes.append(f"another benchmark was still running after waiting {waited:.0f} s ({others[0]}):"
                     " figures may be disturbed")
    elif waited > 2:
        notes.append(f"waited {waited:.0f} s for another benchmark on this machine to finish")


def decide_postfix(a: argparse.Namespace, notes: list[str]) -> bool:
    if a.no_postfix:
        return False
    if shutil.which("smtp-source"):
        return True
    if a.quick:
        notes.append("Postfix columns skipped: smtp-source is not installed (--quick does not install it)")
        return False
    if os.geteuid() != 0:
        notes.append("Postfix columns skipped: not root, cannot install Postfix")
        return False
    return True  # relay_bench.py installs it


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = time.time()
    notes: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="msgspool-bench-", dir=a.workdir))
    postfix = decide_postfix(a, notes)
    load_kind = a.load
    if load_kind == "auto":
        load_kind = "tools" if tools_available() and not a.quick else "python"
    if load_kind == "tools" and not tools_available():
        load_kind = "python"
        notes.append("smtp-source/smtp-sink not installed: own rate rows use the Python load")
    ctx = rows.Context(quick=a.quick, postfix=postfix, load_kind=load_kind, workdir=workdir, queued=a.queued,
                       postfix_outage_cap=a.postfix_outage_cap, notes=notes)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    load_before = os.getloadavg()
    used_postfix = False
    try:
        wait_quiet(a.wait_quiet, notes)
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
        if "relay" in a.rows:
            steps.append(("relay", lambda: rows.row_relay(ctx)))
        if "tls" in a.rows:
            steps.append(("tls", lambda: rows.row_tls(ctx)))
        if "latency" in a.rows:
            steps.append(("latency", lambda: rows.row_latency(ctx)))
        if "outage" in a.rows:
            steps.append(("outage", lambda: rows.row_outage(ctx)))
        if "relay_pg" in a.rows:
            steps.append(("relay_pg", lambda: rows.row_relay_pg(ctx)))
        if "nodes" in a.rows:
            steps.append(("nodes", lambda: rows.row_nodes(ctx)))
        if {"queued", "list", "status", "search", "backlog"} & set(a.rows):
            steps.append(("queued", lambda: rows.row_queued(ctx, with_load="queued" in a.rows,
                                                            with_list="list" in a.rows,
                                                            with_backlog="backlog" in a.rows,
                                                            with_status="status" in a.rows,
                                                            with_search="search" in a.rows)))
        for name, step in steps:
            if postfix and name in ("latency", "outage") and not used_postfix:
                rows.ensure_postfix()  # relay_bench.py's configuration, when the relay row did not run it
            used_postfix = used_postfix or (postfix and name in ("relay", "tls", "latency", "outage", "relay_pg"))
            if name != steps[0][0]:
                wait_quiet(a.wait_quiet, notes)  # someone else's benchmark would skew this row
            log(f"== {name}")
            t0 = time.monotonic()
            try:
                results[name] = step()
                results[name]["row_seconds"] = time.monotonic() - t0
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"
                log(f"{name} failed:\n{traceback.format_exc()}")
    finally:
        Group.close()
        if used_postfix:
            subprocess.run(["postfix", "stop"], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.time() - started
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)), "cores": os.cpu_count(),
            "cpu": _cpu_model(), "ram_gb": _ram_gb(), "python": platform.python_version(), "seconds": elapsed,
            "command": "make bench" + (" BENCH_ARGS='" + " ".join(argv or sys.argv[1:]) + "'"
                                       if (argv or sys.argv[1:]) else ""),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "postfix": postfix,
            "load": load_kind, "notes": notes}
    print(render(results, errors, meta, a))
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "results": results, "errors": errors}, indent=2, default=str))
    return 1 if errors else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 0.0


# -- the table ------------------------------------------------------------------------------------


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _n(x: float) -> str:
    return f"{x:,.0f}"


def render(res: dict[str, Any], errors: dict[str, str], meta: dict[str, Any], a: argparse.Namespace) -> str:
    q = f"{a.queued:,}"
    table: list[tuple[str, str, str, str, str, str]] = []

    def row(metric: str, name: str, build: Callable[[dict[str, Any]], tuple[str, str, str, str, bool | None]],
            target: str) -> None:
        if name in errors:
            table.append((metric, "error: " + errors[name].splitlines()[0][:100], "", "", target, "—"))
        elif name not in res:
            table.append((metric, "not run", "", "", target, "—"))
        else:
            ms, pf, measured, tgt, ok = build(res[name])
            table.append((metric, ms, pf, measured, tgt or target, _met(ok)))

    def relay(key: str, label: str) -> Callable[[dict[str, Any]], tuple[str, str, str, str, bool | None]]:
        def build(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
            ms = f"{_n(r['msgspool'][key])} msg/s"
            if "postfix" not in r:
                return ms, "—", "", "", None
            ratio = r[f"{key}_ratio"]
            return ms, f"{_n(r['postfix'][key])} msg/s", f"{label} {ratio:.2f}", "", ratio >= 1.5
        return build

    def tls(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        ms = f"{_n(r['tls']['e2e'])} msg/s (clear {_n(r['plain']['e2e'])}, {r['tls_cost']:.2f})"
        if "postfix" not in r:
            return ms, "—", "", "", None
        return ms, f"{_n(r['postfix']['e2e'])} msg/s", f"ratio {r['e2e_ratio']:.2f}", "", r["e2e_ratio"] >= 1.5

    def latency(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        m = r["msgspool"]
        ms = f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} ms"
        if "postfix" not in r:
            return ms, "—", "", "", None
        p = r["postfix"]
        return (ms, f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms", f"p99 ratio {r['p99_ratio']:.2f}", "",
                m["p99_ms"] <= p["p99_ms"])

    def outage(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        def cell(o: dict[str, Any]) -> str:
            if o["capped"]:
                return f">{o['seconds']:.0f} s ({o['arrived']}/{r['messages']} by then)"
            return f"{o['seconds']:.2f} s"
        m = r["msgspool"]
        pf = cell(r["postfix"]) if "postfix" in r else "—"
        return cell(m), pf, f"down {r['down_after_submit_s']:.0f} s after the last 250", "", \
            (not m["capped"] and m["seconds"] <= 5.0)

    def queued(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        if "e2e" not in r:
            return "not run (list only)", "—", "", "", None
        e = r["e2e"]
        change = (r["e2e_ratio"] - 1) * 100
        return (f"{_n(e['full'])} vs {_n(e['empty'])} msg/s empty", "—", f"{change:+.0f} %", "",
                r["e2e_ratio"] >= 0.8)

    def rss(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        peak = max(r.get("rss_peak_mb", 0.0), r["rss_idle_mb"], r.get("rss_after_mb", 0.0))
        procs = f", {r['procs']} process{'es' if r['procs'] != 1 else ''}"
        load = f" / peak {peak:.0f} MB under load" if "rss_peak_mb" in r else ""
        return (f"idle {r['rss_idle_mb']:.0f} MB{load}{procs}", "—",
                f"empty spool: {r['rss_idle_empty_mb']:.0f} MB idle", "", peak <= 300)

    def listing(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        lst = r.get("list")
        if not lst:
            return "not run", "—", "", "", None
        first = "no line" if lst["first_line_s"] is None else f"first line {lst['first_line_s']:.2f} s"
        total = (f">{lst['seconds']:.0f} s (capped)" if lst["capped"] else f"{lst['seconds']:.0f} s")
        ms = f"{first}; {lst['lines']:,} lines in {total}; CLI peak RSS {lst['rss_max_mb']:.0f} MB"
        ok = (lst["first_line_s"] is not None and lst["first_line_s"] < 1.0 and lst["rss_max_mb"] <= 100
              and (lst["capped"] or lst["exit"] == 0))
        return ms, "—", f"{_n(lst['lines_per_s'])} lines/s", "", ok

    row("end-to-end relay rate, msgspool / Postfix (relay_bench.py defaults)", "relay", relay("e2e", "ratio"), "≥ 1.5")
    row("accept rate (250 after DATA), msgspool / Postfix", "relay", relay("accept", "ratio"), "≥ 1.5")
    row("end-to-end relay rate with STARTTLS in and out (encrypt), msgspool / Postfix", "tls", tls, "≥ 1.5")
    row("latency submit → sink at 50 msg/s, p50 / p99", "latency", latency, "p99 ≤ Postfix's p99")
    row("destination down during 200 submissions, then up: time until all 200 reached it", "outage", outage,
        "≤ 5 s")
    row(f"{q} messages queued (deferred): end-to-end rate of fresh traffic", "queued", queued,
        "within 20 % of the empty-queue rate")
    row(f"resident memory of the daemon with {q} queued (VmRSS, whole process tree)", "queued", rss, "≤ 300 MB")
    row(f"`msgspool queue list --json` over {q} messages", "queued", listing, "streams; first line in < 1 s")

    def status(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        st = r.get("status")
        if not st:
            return "not run", "—", "", "", None
        ms = (f"GET /api/status p50 {st['http_ms']['p50']:.1f} ms (max {st['http_ms']['max']:.1f});"
              f" `msgspool status --json` p50 {st['cli_ms']['p50']:.0f} ms")
        measured = (f"CLI {st['cli_over_empty_ms']:+.0f} ms over the empty spool's {st['cli_empty_ms']:.0f} ms"
                    " (Python's start and imports)")
        ok = st["http_ms"]["p50"] <= 50 and st["cli_over_empty_ms"] <= 50 and st["queue_messages"] == [r["queued"]]
        return ms, "—", measured, "", ok

    row(f"status with {q} queued (`GET /api/status`, `msgspool status --json`)", "queued", status, "≤ 50 ms")

    def searched(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        se = r.get("search")
        if not se:
            return "not run", "—", "", "", None
        worst = max(se.values(), key=lambda c: c["p50_ms"])
        ms = (f"first page p50 {se['first page']['p50_ms']:.1f} ms; slowest search p50 {worst['p50_ms']:.1f} ms"
              f" ({next(k for k, v in se.items() if v is worst)})")
        ok = all(c["p50_ms"] <= 50 and c["found"] >= c["least"] for c in se.values())
        return ms, "—", f"{len(se)} searches, a page of 50 each", "", ok

    row(f"queue search with {q} queued (`GET /api/queue`, first and filtered pages)", "queued", searched,
        "≤ 50 ms")

    def nodes_rate(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        ms = f"{_n(r['accept_rate'])} msg/s accepted, {_n(r['e2e_rate'])} end to end"
        return (ms, "—", f"{r['healthy_duplicated']} twice, {r['healthy_lost']} lost;"
                f" {r['sink_connections_peak']} sink connections at most", "",
                r["healthy_duplicated"] == 0 and r["healthy_lost"] == 0)

    def failover(r: dict[str, Any]) -> tuple[str, str, str, str, bool | None]:
        bound = r["lease_time"] * 1.25
        return (f"{r['takeover_s']:.2f} s (lease_time {r['lease_time']:g} s)", "—",
                f"{r['lost']} lost, {r['duplicated']} twice of {r['in_flight_at_kill']} in flight", "",
                0 <= r["takeover_s"] <= bound + 0.5 and r["lost"] == 0 and r["stuck"] == 0
                and r["duplicated"] <= r["in_flight_at_kill"])

    row("end-to-end relay rate on the PostgreSQL store, one node, msgspool / Postfix", "relay_pg",
        relay("e2e", "ratio"), "≥ 1.5")
    row("three nodes on one PostgreSQL spool: aggregate rate, exactly once", "nodes", nodes_rate,
        "0 twice, 0 lost")
    row("one of three nodes killed -9 under load: its work taken over after", "nodes", failover,
        "≤ lease time + one heartbeat; 0 lost")

    head = ("| metric | msgspool | Postfix | measured | target | met |", "|---|---|---|---|---|---|")
    lines = [f"msgspool benchmark, {meta['date']}: {meta['cores']} cores ({meta['cpu']}), {meta['ram_gb']:.0f} GB,"
             f" Python {meta['python']}; `{meta['command']}` took {meta['seconds'] / 60:.1f} min", "", *head]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |" for cells in table]
    lines += ["", *_details(res, meta)]
    return "\n".join(lines)


def _details(res: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    out = []
    if "relay" in res:
        r = res["relay"]
        per = "; ".join(f"{name} " + ", ".join(f"{a:.0f}/{e:.0f}" for a, e in r[name]["rounds"])
                        for name in ("msgspool", "postfix") if name in r)
        out.append(f"- relay: {r['source']}, {r['msgs']} msgs x {r['rounds']} rounds;"
                   f" accept/end-to-end per round: {per}")
    if "relay_pg" in res:
        r = res["relay_pg"]
        per = "; ".join(f"{name} " + ", ".join(f"{a:.0f}/{e:.0f}" for a, e in r[name]["rounds"])
                        for name in ("msgspool", "postfix") if name in r)
        out.append(f"- relay_pg: msgspool on PostgreSQL ({r['database']}, a fresh schema), {r['source']},"
                   f" {r['msgs']} msgs x {r['rounds']} rounds; accept/end-to-end per round: {per}")
    if "nodes" in res:
        r = res["nodes"]
        per_node = ", ".join(str(n) for n in r["per_node_acknowledged"])
        out.append(f"- nodes: {r['nodes']} nodes, {r['healthy_acknowledged']:,} messages in"
                   f" {r['healthy_seconds']:.0f} s healthy (per node {per_node}); then node 0 killed -9 with"
                   f" {r['in_flight_at_kill']} in flight: its leases taken over after {r['takeover_s']:.2f} s,"
                   f" all it had acknowledged delivered after {r['caught_up_s']:.2f} s; {r['acknowledged']:,}"
                   f" acknowledged in that phase, {r['lost']} lost, {r['duplicated']} twice, {r['stuck']} stuck")
    if "tls" in res:
        r = res["tls"]
        per = "; ".join(f"{name} " + ", ".join(f"{a:.0f}/{e:.0f}" for a, e in r[name]["rounds"])
                        for name in ("plain", "tls", "postfix") if name in r)
        over = f"{r['sink_encrypted']:,} of the {r['sink_arrived']:,} messages at msgspool's TLS sink came over TLS"
        if "postfix_sink_encrypted" in r:
            over += f", {r['postfix_sink_encrypted']:,} of {r['postfix_sink_arrived']:,} at Postfix's"
        out.append(f"- tls: {r['source']}, {r['msgs']} msgs x {r['rounds']} rounds (msgspool in clear, with TLS,"
                   f" Postfix with TLS, alternating); accept/end-to-end per round: {per}; {over}")
    if "latency" in res:
        r = res["latency"]
        for name in ("msgspool", "postfix"):
            if name in r:
                m = r[name]
                out.append(f"- latency {name}: {m['arrived']}/{m['sent']} arrived, mean {m['mean_ms']:.1f} ms,"
                           f" max {m['max_ms']:.1f} ms; split at the 250 after DATA: submit -> 250 p50"
                           f" {m['accept_p50_ms']:.1f} / p99 {m['accept_p99_ms']:.1f} ms, 250 -> sink p50"
                           f" {m['forward_p50_ms']:.1f} / p99 {m['forward_p99_ms']:.1f} ms; client behind schedule"
                           f" at most {m['client_late_ms']:.0f} ms")
    if "outage" in res:
        r = res["outage"]
        for name in ("msgspool", "postfix"):
            if name in r:
                o = r[name]
                dest = o.get("destination_before")
                seen = f"; /api/status before: destination {dest.get('status')}" if dest else ""
                first = "none arrived" if o["first_s"] is None else \
                    f"first arrival {o['first_s']:.2f} s after the sink came up"
                out.append(f"- outage {name}: 200 accepted in {o['accept_s']:.2f} s; {first};"
                           f" duplicates {o['duplicates']}{seen}")
    if "queued" in res:
        r = res["queued"]
        p = r["prefill"]
        out.append(f"- queued: prefill of {p['messages']:,} in {p['seconds']:.0f} s ({p['bytes'] / 2**20:,.0f} MB"
                   f" spool); daemon startup {r['startup_s']['full']:.2f} s (empty spool"
                   f" {r['startup_s']['empty']:.2f} s); GET /api/status {r['status_s']:.2f} s;"
                   f" SIGTERM took {r['stop_s']['full']:.1f} s; RSS after the run {r.get('rss_after_mb', 0):.0f} MB")
        if "runs" in r:
            runs = "; ".join(f"{k} " + ", ".join(f"{a:.0f}/{e:.0f}" for a, e in v) for k, v in r["runs"].items())
            out.append(f"- queued load: {r['load']}; accept/end-to-end per round: {runs};"
                       f" accept ratio full/empty {r['accept_ratio']:.2f}")
        if r.get("backlog"):
            b = r["backlog"]
            sink = "none" if b["sink_p50_ms"] is None else f"p50 {b['sink_p50_ms']:.0f} ms"
            out.append(f"- backlog (extra): `msgspool queue flush` of the {r['queued']:,} took {b['flush_s']:.1f} s;"
                       f" fresh traffic at 50 msg/s for {b['seconds']:.0f} s meanwhile: 250 after DATA p50"
                       f" {b['accept_p50_ms']:.0f} / p99 {b['accept_p99_ms']:.0f} / max {b['accept_max_ms']:.0f} ms,"
                       f" {b['arrived']}/{b['sent']} of them reached the sink by the end (submit -> sink"
                       f" {sink}) while {b['drained']:,} backlog messages drained to it at"
                       f" {b['drain_rate']:,.0f} msg/s; peak RSS {b['rss_peak_mb']:.0f} MB;"
                       f" outbox after: {b['queue_after']};"
                       f" daemon log errors: {len(b['log_errors'])}")
        if r.get("list"):
            lst = r["list"]
            out.append(f"- queue list: exit {lst['exit']}, first recipient status {lst['first_status']!r}"
                       + (f", stderr: {lst['stderr'].strip()}" if lst["stderr"].strip() else ""))
        if r.get("search"):
            each = "; ".join(f"{k} {v['p50_ms']:.1f} ms ({v['found']} found{', more' if v['next_cursor'] else ''})"
                             for k, v in r["search"].items())
            out.append(f"- queue search, p50 per search (a page of 50): {each}")
    out.append(f"- machine load average before/after: {meta['loadavg_before'][0]:.1f} / {meta['loadavg_after'][0]:.1f};"
               f" own-rate load generator: {meta['load']}")
    out += [f"- note: {n}" for n in meta["notes"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
