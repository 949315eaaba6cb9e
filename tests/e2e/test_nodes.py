"""Several nodes on one PostgreSQL spool (bench/nodes.py, `make nodes`) in its --quick form (issue 11):
three `msgspool serve` processes with their own SMTP ports, one recording sink. While all are
healthy every acknowledged message arrives exactly once, and together they hold no more sessions
to the sink than destination_concurrency; after kill -9 of one under load nothing is lost or stuck,
at most its in-flight recipients arrive twice, and its work is taken over within lease time and one
heartbeat (plus a second of slack for a loaded CI box). Skipped outside CI when no PostgreSQL answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import pg
from tests.support.daemon import cli_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_three_nodes_deliver_once_share_the_destination_limit_and_take_over_a_killed_one(tmp_path: Path) -> None:
    pg.require()
    out, kept = tmp_path / "nodes.json", tmp_path / "nodes"
    proc = subprocess.run([sys.executable, "-m", "bench.nodes", "--quick", "--json", str(out), "--keep", str(kept),
                           "--database-url", pg.ADMIN_URL], cwd=REPO, capture_output=True, text=True,
                          timeout=280, env=cli_env())
    # What the nodes said of their leases (a slow heartbeat, a lost lease, a rescue): why a duplicate came.
    leases = "".join(line for log in sorted(kept.glob("node*.log")) for line in log.read_text().splitlines(True)
                     if "lease" in line or "heartbeat" in line or "rescued" in line)
    context = (f"\n--- stdout\n{proc.stdout}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
               f"\n--- the nodes on their leases\n{leases[-3000:]}")
    assert out.exists(), context
    r = json.loads(out.read_text())
    assert r["nodes"] == 3 and r["healthy_acknowledged"] > 50, context
    assert r["healthy_duplicated"] == 0 and r["healthy_lost"] == 0, context
    assert r["sink_connections_peak"] <= r["destination_concurrency"], context
    assert r["acknowledged"] > 50, context
    assert r["lost"] == 0 and r["stuck"] == 0, context
    assert r["duplicated"] <= r["in_flight_at_kill"] and r["twice_before_the_kill"] == 0, context
    lease = r["lease_time"]
    assert 0 <= r["takeover_s"] <= lease + lease / 4 + 1.0, context
    assert proc.returncode == 0, context
