"""The benchmark suite (bench/, run by `make bench`) in its --quick form against msgspool only, so
the bench code cannot rot. It checks that every row measured something sensible, never absolute
figures: CI does not gate on speed. Postfix is neither installed nor started here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import cli_env

REPO = Path(__file__).resolve().parents[2]
QUEUED = 5000


def test_bench_quick_runs_every_row_against_msgspool(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench", "--quick", "--no-postfix", "--load", "python", "--queued", str(QUEUED),
            "--only", "relay,tls,latency,outage,queued,list,status,search,backlog",  # every row, and the opt-in extra
            "--json", str(out)]  # spools under /tmp: pytest's tmp_path is too long for a control socket
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=100, env=cli_env())
    context = f"\n--- stdout\n{proc.stdout}\n--- stderr (tail)\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, context
    assert "| metric | msgspool | Postfix |" in proc.stdout, context
    run = json.loads(out.read_text())
    assert run["errors"] == {}, context
    res = run["results"]

    relay = res["relay"]["msgspool"]
    assert relay["accept"] > 0 and relay["e2e"] > 0, context

    tls = res["tls"]
    assert tls["tls"]["e2e"] > 0 and tls["plain"]["e2e"] > 0, context
    assert tls["sink_encrypted"] == tls["sink_arrived"] > 0, "a message reached the TLS sink in clear" + context

    latency = res["latency"]
    assert "postfix" not in latency, context
    assert latency["msgspool"]["arrived"] == latency["msgspool"]["sent"] == latency["messages"], context
    assert 0 < latency["msgspool"]["p50_ms"] <= latency["msgspool"]["p99_ms"], context

    outage = res["outage"]["msgspool"]
    assert outage["arrived"] == 200 and not outage["capped"], context
    assert outage["destination_before"]["status"] == "down", context

    queued = res["queued"]
    assert queued["prefill"]["messages"] == QUEUED, context
    assert queued["e2e"]["full"] > 0 and queued["e2e"]["empty"] > 0, context
    assert queued["rss_idle_mb"] > 0 and queued["procs"] >= 1, context
    assert queued["sink_total"] == queued["fresh_sent"], "a prefilled (deferred) message reached the sink" + context
    listing = queued["list"]
    assert listing["exit"] == 0 and not listing["capped"], context
    assert listing["lines"] == QUEUED and listing["first_status"] == "deferred", context
    assert listing["first_line_s"] is not None and listing["rss_max_mb"] > 0, context

    status = queued["status"]
    assert status["queue_messages"] == [QUEUED], context  # the kept counts, from the daemon and the CLI
    assert 0 < status["http_ms"]["p50"] <= status["http_ms"]["max"] and status["cli_ms"]["p50"] > 0, context

    search = queued["search"]  # every search found what its page must hold (the prefill's messages)
    assert all(case["found"] >= case["least"] and case["p50_ms"] > 0 for case in search.values()), search
    assert search["first page"]["found"] == 50 and search["recipient (1 message)"]["found"] == 1, search
    backlog = queued["backlog"]
    assert "recipients due now" in backlog["flush_output"], context
    assert backlog["errors"] == 0 and backlog["sent"] > 0 and backlog["drained"] > 0, context


def test_bench_rejects_an_unknown_row() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nonsense"], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env=cli_env())
    assert proc.returncode == 2 and "unknown row" in proc.stderr, proc.stderr
