"""A full disk under SMTP load (issue 9, point 7): `msgspool serve` with its spool on a small tmpfs,
relaying to the bench sink, while clients submit without pause. Not a timed test: it prints what
it saw, and fails (exit 1) only on a broken guarantee.

    make abuse-disk                                  # the full run (about half a minute)
    .venv/bin/python -m bench.diskfull --quick       # seconds: fewer clients, shorter phases
    .venv/bin/python -m bench.diskfull --json FILE [--dir MOUNTED_DIR]

Phases, one daemon: ``before`` the clients submit for a while; ``full`` one file takes every free
byte of the file system, and the clients go on (a refused message is offered again a moment later,
as an MTA would); ``after`` the file is removed and the clients go on; then they stop, and the
bench waits until every acknowledged message reached the sink (or the cap passes).

Reported: the replies seen (per code and phase), messages acknowledged (250), **lost** (acknowledged
but never at the sink: must be 0), **stuck** (still waiting in the queue at the end: must be 0),
how long after the space came back the last acknowledged message arrived, whether the daemon
lived through it and whether its log holds a traceback.

The load is paced (`--rate` messages a second in all, 100 by default, of 16 KB): the spool keeps
what it delivered (Sent Items), so an unpaced load would fill the file system by itself and the
space would never come back. Needs root for `mount -t tmpfs` (the size is `--size`, 64m by
default); `--dir` uses a file system already mounted instead (the test suite's small variant).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Daemon, free_port, log, msgspool_command
from bench.sink import SinkProcess
from bench.smtpclient import Session, SMTPError, make_message

EXIT_NO_TMPFS = 77  # automake's "skipped"


@dataclass
class Results:
    clients: int = 0
    message_size: int = 0
    rate: float = 0.0  # messages a second offered, all clients together
    replies: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> "250" -> count
    acknowledged: int = 0
    refused_452: int = 0
    other_errors: int = 0
    delivered: int = 0
    lost: int = 0
    stuck: int = 0
    waiting_when_space_came_back: int = 0  # acknowledged by then, not yet at the sink
    flowed_after_s: float | None = None  # space back -> the last of those at the sink
    settled_after_s: float | None = None  # space back -> nothing waiting in the queue (an upper bound)
    daemon_alive: bool = False
    log_tracebacks: int = 0  # any other than StorageFull's
    log_storage_full_tracebacks: int = 0  # a background task that logged the failure whole and tried again
    notes: list[str] = field(default_factory=list)


class Load:
    """Clients that submit messages back to back, each over its own session, tallying replies."""

    def __init__(self, port: int, clients: int, size: int, rate: float) -> None:
        self.port, self.clients, self.size = port, clients, size
        self.interval = clients / rate  # each client's pause between messages: `rate` a second in all
        self.phase = "before"
        self.replies: dict[str, Counter[str]] = {}
        self.acknowledged: dict[str, str] = {}  # id -> the phase it was acknowledged in
        self.errors: list[str] = []
        self.stopping = False
        self._ids = itertools.count()

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    async def _client(self, n: int) -> None:
        session: Session | None = None
        while not self.stopping:
            try:
                if session is None:
                    session = await Session.open("127.0.0.1", self.port)
                mid = f"df-{n}-{next(self._ids)}"
                code, phase = await self._submit(session, make_message(self.size, mid))
            except (OSError, SMTPError, TimeoutError) as err:
                self._count(self.phase, "error")
                self.errors.append(f"{type(err).__name__}: {err}"[:200])
                session = None
                await asyncio.sleep(0.2)
                continue
            self._count(phase, str(code))
            if code == 250:
                self.acknowledged[mid] = phase
            await asyncio.sleep(self.interval)  # a refused one is offered again later, as an MTA would
        if session is not None:
            await session.close()

    async def _submit(self, session: Session, content: bytes) -> tuple[int, str]:
        """The reply to the end of data, and the phase when the message was sent whole."""
        await session.expect(b"MAIL FROM:<bench@sender.example>\r\n", 250)
        await session.expect(b"RCPT TO:<rcpt@dest.example>\r\n", 250)
        await session.expect(b"DATA\r\n", 354)
        session.writer.write(content + b".\r\n")
        phase = self.phase
        code, text = await asyncio.wait_for(session.reply(), 60)
        if code not in (250, 452):
            self.errors.append(text[:200])
        return code, phase

    def _count(self, phase: str, what: str) -> None:
        self.replies.setdefault(phase, Counter())[what] += 1


def fill(path: Path) -> int:
    """Take every free byte of the file system with the file at `path`."""
    written = 0
    with path.open("ab", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 4096, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
    return written


def waiting_in_queue(data: Path) -> list[str]:
    """Messages whose recipients are not all final (`msgspool queue list --json`): id and statuses."""
    out = subprocess.run([*msgspool_command(), "queue", "list", "--json", "--data", str(data)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    final = {"delivered", "failed", "expired"}
    waiting = []
    for line in filter(str.strip, out.splitlines()):
        message = json.loads(line)
        statuses = [r["status"] for r in message["recipients"]]
        if any(status not in final for status in statuses):
            waiting.append(f"{message['id']} {','.join(statuses)}")
    return waiting


async def scenario(daemon: Daemon, sink: SinkProcess, disk: Path, results: Results, phases: tuple[float, float, float],
                   cap: float) -> None:
    load = Load(daemon.smtp_port, results.clients, results.message_size, results.rate)
    clients = asyncio.ensure_future(load.run())
    before, full, after = phases
    log(f"before: {results.clients} clients, {results.message_size // 1024} KB messages, {before:.0f} s")
    await asyncio.sleep(before)
    load.phase = "full"
    filled = await asyncio.to_thread(fill, disk / "filler")
    log(f"full: {filled / 1e6:.1f} MB filler, {full:.0f} s")
    await asyncio.sleep(full)
    load.phase = "after"
    (disk / "filler").unlink()
    freed = time.time()
    at_sink = {mid for _at, mid, _sent in sink.records()}
    waiting = {mid for mid in load.acknowledged if mid not in at_sink}
    results.waiting_when_space_came_back = len(waiting)
    log(f"after: space back, {after:.0f} s")
    await asyncio.sleep(after)
    load.stopping = True
    await clients
    acked = set(load.acknowledged)
    log(f"waiting up to {cap:.0f} s for {len(acked)} acknowledged messages at the sink")
    deadline = time.monotonic() + cap
    arrived: dict[str, float] = {}
    while time.monotonic() < deadline:
        arrived = {mid: at for at, mid, _sent in sink.records()}
        if acked <= arrived.keys():
            break
        await asyncio.sleep(0.2)
    results.replies = {phase: dict(counts) for phase, counts in load.replies.items()}
    results.acknowledged = len(acked)
    results.refused_452 = sum(c.get("452", 0) for c in load.replies.values())
    results.other_errors = sum(n for c in load.replies.values() for code, n in c.items() if code not in ("250", "452"))
    results.delivered = len(acked & arrived.keys())
    results.lost = len(acked - arrived.keys())
    last = max((arrived[mid] for mid in waiting & arrived.keys()), default=freed)
    results.flowed_after_s = round(max(0.0, last - freed), 2) if not results.lost else None
    results.daemon_alive = daemon.proc is not None and daemon.proc.poll() is None
    # Delivered is not yet recorded: an outcome that waited for space is written by a retry a few
    # seconds later. Stuck is what still waits once the cap has passed.
    while (waiting_now := await asyncio.to_thread(waiting_in_queue, daemon.data)) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    results.stuck = len(waiting_now)
    results.settled_after_s = None if waiting_now else round(time.time() - freed, 1)
    results.notes += [f"stuck: {line}" for line in waiting_now[:5]]
    results.notes += sorted(set(load.errors))[:10]


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Any:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        raise PermissionError(f"cannot mount a tmpfs at {where} (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def report(r: Results) -> str:
    phases = ", ".join(f"{phase}: " + " ".join(f"{code} x{n}" for code, n in sorted(counts.items()))
                       for phase, counts in r.replies.items())
    flowed = f"{r.flowed_after_s} s" if r.flowed_after_s is not None else "never"
    return "\n".join([
        "| disk full under SMTP load | result |", "|---|---|",
        f"| clients, message size, offered rate | {r.clients}, {r.message_size // 1024} KB, {r.rate:g}/s |",
        f"| replies seen | {phases} |",
        f"| acknowledged (250) | {r.acknowledged} |",
        f"| refused 452 4.3.1 while full | {r.refused_452}; other errors {r.other_errors} |",
        f"| lost (acknowledged, never delivered) | {r.lost} |",
        f"| stuck (still queued at the end) | {r.stuck}; the queue was empty {r.settled_after_s} s after the "
        "space came back (the load ran on meanwhile) |",
        f"| acknowledged, not yet delivered when space came back | {r.waiting_when_space_came_back}, all at the "
        f"sink {flowed} later |",
        f"| daemon alive | {'yes' if r.daemon_alive else 'NO'} |",
        f"| tracebacks in its log | {r.log_tracebacks}, and {r.log_storage_full_tracebacks} of StorageFull from "
        "delivery's retries |",
    ])


def run(args: argparse.Namespace, workdir: Path, disk: Path) -> Results:
    results = Results(clients=args.clients or (4 if args.quick else 20), message_size=args.message_kb * 1024,
                      rate=args.rate)
    phases = (1.0, 2.0, 1.0) if args.quick else (3.0, 10.0, 3.0)
    sink = SinkProcess(free_port(), workdir / "sink.log").start()
    daemon = Daemon(disk / "spool", f"127.0.0.1:{sink.port}")
    daemon.log_path = workdir / "serve.log"  # outside the full file system
    daemon.start()
    try:
        asyncio.run(scenario(daemon, sink, disk, results, phases, args.cap))
    finally:
        daemon.stop()
        sink.stop()
    expected, others = tracebacks(daemon.log_path.read_text(errors="replace"))
    results.log_storage_full_tracebacks, results.log_tracebacks = expected, len(others)
    results.notes += [record[:2000] for record in others[:3]]
    return results


def tracebacks(text: str) -> tuple[int, list[str]]:
    """The log records holding a traceback: how many end in StorageFull, and the others."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
    with_traceback = [r for r in records if "Traceback (most recent call last)" in r]
    others = [r for r in with_traceback if not r.rstrip().splitlines()[-1].startswith("msgspool.errors.StorageFull")]
    return len(with_traceback) - len(others), others


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.diskfull", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer clients, shorter phases")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--dir", help="a small file system already mounted here (else a tmpfs is mounted)")
    ap.add_argument("--size", default="64m", help="the tmpfs's size (64m)")
    ap.add_argument("--rate", type=float, default=100.0, help="messages a second offered, all clients (100)")
    ap.add_argument("--clients", type=int, default=0, help="concurrent SMTP clients (20; 4 with --quick)")
    ap.add_argument("--message-kb", type=int, default=16, help="message size in KB (16)")
    ap.add_argument("--cap", type=float, default=30.0, help="seconds to wait for acknowledged messages (30)")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="msgspool-diskfull-"))
    try:
        if args.dir:
            results = run(args, workdir, Path(args.dir))
        else:
            with small_disk(workdir / "disk", args.size) as disk:
                results = run(args, workdir, disk)
    except PermissionError as err:
        print(f"bench.diskfull: {err}", file=sys.stderr)
        return EXIT_NO_TMPFS
    print(report(results))
    if results.notes:
        print("\nnotes:\n" + "\n".join(results.notes), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=2))
    failed = (results.lost or results.stuck or not results.refused_452 or not results.daemon_alive
              or results.log_tracebacks)
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
