"""The abuse suite (bench/abuse.py, `make abuse`) in its --quick form: open DATA phases and an
idle flood from outside while a trusted session completes, slow-loris DATA cut at the deadline,
1,000 fuzzed sessions with no crash, stall, malformed reply or traceback. Figures are not gated
(CI does not gate on speed); the outcomes are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import cli_env

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
