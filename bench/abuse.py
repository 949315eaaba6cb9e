"""The SMTP listener under abuse (issue 9, point 5): `msgspool serve` as a black box, attacked over
loopback while a legitimate client goes on. Not a timed test: it prints what it measured.

    make abuse                                   # the full run (about a minute)
    .venv/bin/python -m bench.abuse --quick      # seconds: small counts, same code paths
    .venv/bin/python -m bench.abuse --json FILE

Scenarios, in order, against one daemon (default limits, `trusted_networks = ["127.0.0.1/32"]`,
so every attacker is an outsider; any 127.0.0.0/8 address is this machine, and each attacker
address is its own client):

``data``     50 sessions from outside open a DATA phase and send 4 MB each without ending it.
``flood``    then 1,000 connections from outside (50 addresses) are opened and left idle. Counted:
             how many were greeted 220 and how many 421 4.7.0.
``legit``    while all of that is open: a session from the trusted address (EHLO, MAIL, RCPT,
             DATA, QUIT), timed; and one from an outside address that has nothing open (it finds
             the total limit full: 421 4.7.0, reported as such).
``rss``      the daemon's resident memory (intake and delivery processes summed) before and at
             the peak of the above.
``loris``    one byte every 2 s inside DATA: the time until the listener cuts it (421 4.4.2) at
             `smtpd_data_timeout` (10 s here; ``--data-timeout S`` changes it, and the byte comes
             every S/5 seconds when that is shorter).
``fuzz``     10,000 sessions (1,000 with --quick) of random, malformed and pipelined input (50 at a
             time): commands with control characters, bad UTF-8, NULs, overlong lines, stray
             parameters, bare CR/LF in content, STARTTLS followed by plaintext, abrupt closes.
             Each must end (EOF within 10 s; a session whose STARTTLS was accepted is left to the
             handshake timeout) with only well-formed replies, or it counts as a stall; a crash is
             the daemon gone, a connection refused, or a legitimate session failing afterwards;
             the log must hold no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Group, free_port, log, msgspool_command, tree_rss_mb, wait_port

REPLY_LINE = re.compile(rb"^[2-5][0-9]{2}[ -]")
CONFIG = """\
trusted_networks = ["127.0.0.1/32"]
local_domains = ["example.org"]
relay = "127.0.0.1:9"
smtpd_data_timeout = {data_timeout}
smtpd_timeout = 30.0
message_size_limit = 10240000
"""


@dataclass
class Results:
    data_sessions: int = 0
    data_sent_mb: float = 0.0
    flood_attempted: int = 0
    flood_greeted: int = 0
    flood_refused: int = 0
    flood_other: int = 0
    legit_trusted_s: float = 0.0
    legit_trusted_ok: bool = False
    legit_outsider_reply: str = ""
    rss_idle_mb: float = 0.0
    rss_peak_mb: float = 0.0
    loris_cut_after_s: float = 0.0
    loris_reply: str = ""
    fuzz_sessions: int = 0
    fuzz_crashes: int = 0
    fuzz_stalls: int = 0
    fuzz_bad_replies: int = 0
    fuzz_sessions_per_s: float = 0.0
    fuzz_after_ok: bool = False
    daemon_alive: bool = False
    log_tracebacks: int = 0
    notes: list[str] = field(default_factory=list)


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self, timeout: float = 10.0) -> str:
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return "EOF"
            if line[3:4] != b"-":
                return line.decode(errors="replace").rstrip()

    async def cmd(self, line: bytes, timeout: float = 10.0) -> str:
        self.writer.write(line + b"\r\n")
        return await self.reply(timeout)

    def close(self) -> None:
        self.writer.close()


async def open_data_phase(port: int, source: str, size: int) -> Session | None:
    s = await Session.open(port, source)
    if not (await s.reply()).startswith("220"):
        s.close()
        return None
    for line in (b"EHLO attacker.test", b"MAIL FROM:<x@attacker.test>", b"RCPT TO:<bob@example.org>"):
        await s.cmd(line)
    if not (await s.cmd(b"DATA")).startswith("354"):
        s.close()
        return None
    chunk = (b"x" * 998 + b"\r\n") * 64
    for _ in range(size // len(chunk)):
        s.writer.write(chunk)
        await s.writer.drain()
    return s


async def flood(port: int, n: int, sources: list[str]) -> tuple[list[Session], dict[str, int]]:
    counts = {"220": 0, "421": 0, "other": 0}
    kept: list[Session] = []

    async def one(source: str) -> None:
        try:
            s = await Session.open(port, source)
            greeting = await s.reply(10)
        except (OSError, TimeoutError):
            counts["other"] += 1
            return
        key = greeting[:3] if greeting[:3] in counts else "other"
        counts[key] += 1
        if key == "220":
            kept.append(s)
        else:
            s.close()

    await asyncio.gather(*(one(sources[i % len(sources)]) for i in range(n)))
    return kept, counts


async def legit_session(port: int, source: str = "127.0.0.1") -> tuple[bool, float, str]:
    t0 = time.perf_counter()
    try:
        s = await Session.open(port, source)
        greeting = await s.reply(5)
        if not greeting.startswith("220"):
            s.close()
            return False, time.perf_counter() - t0, greeting
        replies = [await s.cmd(line, 5) for line in (b"EHLO legit.test", b"MAIL FROM:<a@example.org>",
                                                      b"RCPT TO:<bob@example.org>", b"DATA")]
        replies.append(await s.cmd(b"Subject: legit\r\n\r\nhello\r\n.", 5))
        replies.append(await s.cmd(b"QUIT", 5))
        s.close()
    except (OSError, TimeoutError) as err:
        return False, time.perf_counter() - t0, f"error: {err!r}"
    ok = [r[:3] for r in replies] == ["250", "250", "250", "354", "250", "221"]
    return ok, time.perf_counter() - t0, replies[-2]


async def slow_loris(port: int, source: str, interval: float = 2.0, cap: float = 60.0) -> tuple[float, str]:
    s = await Session.open(port, source)
    await s.reply()
    for line in (b"EHLO loris.test", b"MAIL FROM:<x@attacker.test>", b"RCPT TO:<bob@example.org>", b"DATA"):
        await s.cmd(line)
    t0 = time.perf_counter()
    reply = asyncio.ensure_future(s.reply(cap))
    while not reply.done() and time.perf_counter() - t0 < cap:
        try:
            s.writer.write(b"x")
            await s.writer.drain()
        except OSError:
            break
        await asyncio.wait([reply], timeout=interval)
    try:
        text = await reply
    except TimeoutError:
        text = "no reply"
    s.close()
    return time.perf_counter() - t0, text


# -- fuzzing ------------------------------------------------------------------------------------

VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN",
         b"HELP", b"STARTTLS", b"BDAT", b"AUTH", b"ehlo", b"mail from:", b"Rcpt To:", b"XCLIENT", b""]
PARAMS = [b"SIZE=1000", b"SIZE=99999999999", b"SIZE=x", b"BODY=8BITMIME", b"BODY=BINARYMIME", b"SMTPUTF8",
          b"SMTPUTF8=1", b"RET=HDRS", b"RET=FULL", b"RET=X", b"ENVID=a+2Bb", b"ENVID=+zz", b"NOTIFY=NEVER",
          b"NOTIFY=SUCCESS,FAILURE,DELAY", b"NOTIFY=NEVER,SUCCESS", b"ORCPT=rfc822;a+40b", b"ORCPT=utf-8;j\\x{F6}",
          b"HOLDFOR=60", b"HOLDFOR=-1", b"HOLDUNTIL=2030-01-01T00:00:00Z", b"HOLDUNTIL=junk", b"AUTH=<>",
          b"X=Y", b"=", b"SIZE=1 SIZE=2"]
NASTY = [b"\x00", b"\x01", b"\x1b", b"\x7f", b"\r", b"\n", b"\t", b"\xff", b"\xc3", b"\xc2\x85", b"\xe2\x80\xae",
         b"<", b">", b"@", b"\"", b"\\", b":", b" ", b"%", b"[", b"]", "é".encode(), "😀".encode()]


def fuzz_address(rng: random.Random) -> bytes:
    local = rng.choice([b"a", b"bob", b"\"quoted local\"", b"x" * rng.randint(1, 80), b"", b"postmaster"])
    domain = rng.choice([b"example.org", b"example.com", b"[127.0.0.1]", b"[IPv6:::1]", b"", b"a..b",
                         b"x" * rng.randint(1, 300), "bücher.example".encode()])
    address = local + b"@" + domain if rng.random() < 0.9 else local
    if rng.random() < 0.3:
        i = rng.randint(0, len(address))
        address = address[:i] + rng.choice(NASTY) + address[i:]
    return address if rng.random() < 0.2 else b"<" + address + b">"


def fuzz_command(rng: random.Random) -> bytes:
    verb = rng.choice(VERBS)
    roll = rng.random()
    if roll < 0.05:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))).replace(b"\n", b"")
    if roll < 0.08:
        return verb + b" " + b"A" * rng.randint(500, 5000)
    arg = b""
    if verb.upper() in (b"MAIL FROM:", b"RCPT TO:"):
        arg = fuzz_address(rng) + b"".join(b" " + rng.choice(PARAMS) for _ in range(rng.randint(0, 3)))
    elif verb.upper() in (b"EHLO", b"HELO", b"VRFY", b"EXPN", b"AUTH", b"BDAT") and rng.random() < 0.8:
        arg = rng.choice([b"client.test", b"[127.0.0.1]", b"PLAIN AGFiYwBkZWY=", b"10 LAST", b"x" * 70,
                          rng.choice(NASTY)])
    elif rng.random() < 0.1:
        arg = rng.choice(NASTY)
    return verb + (b" " if arg and not verb.endswith(b":") else b"") + arg


def fuzz_content(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 40)):
        line = rng.choice([b"Subject: fuzz", b"", b".", b"..", b".hidden", b"Received: from x by y; now",
                           b"x" * rng.randint(0, 1200), b"MAIL FROM:<evil@example.org>"])
        if rng.random() < 0.1:
            line += rng.choice([b"\n", b"\r", b"\x00", b"\n.\n", b"\r.\r", b"\xff"])
        lines.append(line)
    return b"\r\n".join(lines) + (b"\r\n.\r\n" if rng.random() < 0.9 else b"")


def fuzz_script(rng: random.Random) -> list[bytes]:
    """The writes of one session: commands (some pipelined together), maybe a message."""
    parts: list[bytes] = []
    if rng.random() < 0.7:
        parts.append(b"EHLO fuzz.test\r\n")
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.15:
            parts.append(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n" + fuzz_content(rng))
            continue
        line = fuzz_command(rng) + rng.choice([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
        if parts and rng.random() < 0.4:
            parts[-1] += line  # pipelined in one write
        else:
            parts.append(line)
    if rng.random() < 0.2:  # writes split at random places
        blob = b"".join(parts)
        cuts = sorted(rng.randint(0, len(blob)) for _ in range(rng.randint(1, 4)))
        parts = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
    return parts


@dataclass
class FuzzTally:
    sessions: int = 0
    stalls: int = 0
    bad_replies: int = 0
    errors: list[str] = field(default_factory=list)


async def fuzz_session(port: int, rng: random.Random, tally: FuzzTally) -> None:
    parts = fuzz_script(rng)
    abrupt = rng.random() < 0.1
    try:
        s = await Session.open(port)
    except OSError as err:
        tally.errors.append(f"connect: {err!r}")
        return
    received = bytearray()

    async def read_all() -> None:
        while True:
            chunk = await s.reader.read(65536)
            if not chunk:
                return
            received.extend(chunk)
            if b"220 2.0.0 Ready to start TLS" in received:
                return  # the rest would have to be a TLS handshake; the listener's handshake timeout ends it

    reading = asyncio.ensure_future(read_all())
    try:
        for part in parts:
            s.writer.write(part)
            await s.writer.drain()
            if rng.random() < 0.2:
                await asyncio.sleep(0.001)
        if abrupt:
            s.writer.transport.abort()
        else:
            # End whatever is open (a command line, a DATA phase), then leave.
            s.writer.write(b"\r\n.\r\nRSET\r\nQUIT\r\n")
            await s.writer.drain()
        await asyncio.wait_for(reading, 10)
    except TimeoutError:
        tally.stalls += 1
        tally.errors.append(f"stall: {b''.join(parts)[:200]!r}")
    except OSError:
        pass  # the listener closed first (421 after too many errors, a failed TLS handshake): fine
    finally:
        reading.cancel()
        s.writer.transport.abort()
    tally.sessions += 1
    for line in bytes(received).split(b"\r\n"):
        if line and not REPLY_LINE.match(line):
            tally.bad_replies += 1
            tally.errors.append(f"bad reply line {line[:120]!r}")
            break


async def fuzz(port: int, n: int, seed: int, concurrency: int = 50) -> FuzzTally:
    tally = FuzzTally()
    rng = random.Random(seed)
    seeds = [rng.getrandbits(32) for _ in range(n)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for s in seeds:
        queue.put_nowait(s)

    async def worker() -> None:
        while not queue.empty():
            await fuzz_session(port, random.Random(queue.get_nowait()), tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


# -- the run ------------------------------------------------------------------------------------


def start_daemon(workdir: Path, tls: bool, data_timeout: float) -> tuple[subprocess.Popen[Any], int, Path]:
    data = workdir / "spool"
    data.mkdir(parents=True)
    config = CONFIG.format(data_timeout=float(data_timeout))
    if tls:
        try:
            import trustme
        except ImportError:
            tls = False
        else:
            issued = trustme.CA().issue_cert("mx.test", "127.0.0.1")
            issued.private_key_and_cert_chain_pem.write_to_path(str(workdir / "tls.pem"))
            config += f'tls_cert_file = "{workdir / "tls.pem"}"\ntls_key_file = "{workdir / "tls.pem"}"\n'
    (data / "msgspool.toml").write_text(config)
    port = free_port()
    log_path = workdir / "serve.log"
    argv = [*msgspool_command(), "serve", "--data", str(data), "--smtp", f"127.0.0.1:{port}",
            "--http", f"127.0.0.1:{free_port()}"]
    proc = Group.start(argv, stdout=subprocess.DEVNULL, stderr=log_path.open("ab"))
    wait_port(port, proc=proc, what="msgspool serve")
    return proc, port, log_path


async def run(quick: bool, results: Results, port: int, proc: subprocess.Popen[Any], loris_interval: float) -> None:
    n_data, data_size = (5, 1_000_000) if quick else (50, 4_000_000)
    n_flood = 100 if quick else 1000
    n_fuzz = 1000 if quick else 10_000
    results.rss_idle_mb = round(tree_rss_mb(proc.pid)[0], 1)
    peak = results.rss_idle_mb

    def sample() -> None:
        nonlocal peak
        peak = max(peak, tree_rss_mb(proc.pid)[0])

    log(f"data: {n_data} open DATA phases of {data_size / 1e6:.0f} MB from outside")
    data_sessions = [s for s in await asyncio.gather(*(open_data_phase(port, f"127.0.1.{i // 20 + 1}", data_size)
                                                        for i in range(n_data))) if s is not None]
    results.data_sessions = len(data_sessions)
    results.data_sent_mb = round(len(data_sessions) * data_size / 1e6, 1)
    sample()
    log(f"flood: {n_flood} idle connections from 50 outside addresses")
    kept, counts = await flood(port, n_flood, [f"127.0.2.{i + 1}" for i in range(50)])
    results.flood_attempted = n_flood
    results.flood_greeted, results.flood_refused, results.flood_other = counts["220"], counts["421"], counts["other"]
    sample()
    log("legit: a trusted session and an outsider while all of that is open")
    ok, took, _reply = await legit_session(port)
    results.legit_trusted_ok, results.legit_trusted_s = ok, round(took, 3)
    _ok, _took, outsider = await legit_session(port, "127.0.3.1")
    results.legit_outsider_reply = outsider
    sample()
    results.rss_peak_mb = round(peak, 1)
    for s in [*data_sessions, *kept]:
        s.close()
    await asyncio.sleep(0.5)

    log("loris: one byte every 2 s inside DATA")
    took, reply = await slow_loris(port, "127.0.4.1", loris_interval)
    results.loris_cut_after_s, results.loris_reply = round(took, 1), reply

    log(f"fuzz: {n_fuzz} sessions")
    t0 = time.perf_counter()
    tally = await fuzz(port, n_fuzz, seed=9)
    results.fuzz_sessions_per_s = round(tally.sessions / (time.perf_counter() - t0))
    results.fuzz_sessions, results.fuzz_stalls, results.fuzz_bad_replies = tally.sessions, tally.stalls, \
        tally.bad_replies
    results.notes += tally.errors[:10]
    results.daemon_alive = proc.poll() is None
    results.fuzz_after_ok = (await legit_session(port))[0]
    results.fuzz_crashes = (0 if results.daemon_alive and results.fuzz_after_ok else 1) + \
        len([e for e in tally.errors if e.startswith("connect")])


def report(results: Results) -> str:
    r = results
    return "\n".join([
        "| scenario | result |", "|---|---|",
        f"| open DATA phases from outside | {r.data_sessions} holding {r.data_sent_mb} MB of unfinished content |",
        f"| idle connections from outside (50 addresses) | {r.flood_attempted} tried: {r.flood_greeted} greeted, "
        f"{r.flood_refused} refused 421 4.7.0, {r.flood_other} other |",
        f"| legitimate session (trusted) meanwhile | {'ok' if r.legit_trusted_ok else 'FAILED'} in "
        f"{r.legit_trusted_s * 1000:.0f} ms |",
        f"| new outsider meanwhile | {r.legit_outsider_reply} |",
        f"| daemon RSS (intake + delivery) | {r.rss_idle_mb} MB idle, {r.rss_peak_mb} MB at the peak |",
        f"| slow-loris DATA (a byte every few seconds) | cut after {r.loris_cut_after_s} s: {r.loris_reply} |",
        f"| fuzzed sessions | {r.fuzz_sessions} ({r.fuzz_sessions_per_s}/s): {r.fuzz_crashes} crashes, "
        f"{r.fuzz_stalls} stalls, {r.fuzz_bad_replies} malformed replies; tracebacks in the log: "
        f"{r.log_tracebacks}; a session afterwards {'ok' if r.fuzz_after_ok else 'FAILED'} |",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, same code paths")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--tls", action="store_true", help="give the listener a certificate (fuzz STARTTLS)")
    ap.add_argument("--data-timeout", type=float, default=10.0, help="the daemon's smtpd_data_timeout (10 s)")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="msgspool-abuse-"))
    results = Results()
    proc, port, log_path = start_daemon(workdir, args.tls, args.data_timeout)
    try:
        asyncio.run(run(args.quick, results, port, proc, min(2.0, args.data_timeout / 5)))
    finally:
        Group.stop(proc)
        text = log_path.read_text(errors="replace")
        results.log_tracebacks = text.count("Traceback")
        if results.log_tracebacks:
            results.notes.append(text[text.index("Traceback"):][:2000])
        if results.log_tracebacks == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            results.notes.append(f"log kept in {log_path}")
    print(report(results))
    if results.notes:
        print("\nnotes:\n" + "\n".join(results.notes), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=2))
    failed = (not results.legit_trusted_ok or results.fuzz_crashes or results.fuzz_bad_replies
              or results.fuzz_stalls or results.log_tracebacks or not results.fuzz_after_ok)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
