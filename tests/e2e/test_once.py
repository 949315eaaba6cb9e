"""Once means once (issue 10.1): without a crash, no message reaches the next hop twice.

Work handed from intake to the delivery process is owned by exactly one of them at a time; the
recovery a delivery process runs when it starts takes back only what no live process owns. The
race this pins down: a fresh daemon acknowledges mail in its first second while its delivery
process is still starting up and recovering the spool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import threading
import time
from collections import Counter

import pytest

from msgspool.config import Settings
from msgspool.spooler.runtime import Spooler
from tests.support.daemon import Daemon, Spool, received_tags, tagged_message
from tests.support.sink import Sink

ROUNDS = 3
PER_ROUND = 80


def submit_at_once(daemon: Daemon, prefix: str, count: int, clients: int = 4) -> set[str]:
    """`count` tagged messages over `clients` SMTP sessions opened the moment the port accepts."""
    acked: set[str] = set()
    lock = threading.Lock()

    def client(k: int) -> None:
        with smtplib.SMTP(*daemon.smtp_address, timeout=15) as smtp:
            for i in range(k, count, clients):
                tag = f"{prefix}-{i:04d}"
                assert not smtp.sendmail("load@example.org", [f"{tag}@example.com"],
                                         tagged_message(tag, to=f"{tag}@example.com", newline="\r\n"))
                with lock:
                    acked.add(tag)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return acked


@pytest.mark.timeout(120)
def test_a_fresh_daemon_delivers_what_it_acknowledges_at_once_exactly_once(spool: Spool, relay: Sink,
                                                                           daemon: Daemon) -> None:
    relay.start()
    acked: set[str] = set()
    for round_ in range(ROUNDS):
        daemon.start()
        acked |= submit_at_once(daemon, f"r{round_}", PER_ROUND)
        spool.wait_until(lambda want=frozenset(acked): set(received_tags(relay)) >= want,
                         "every acknowledged message at the relay", timeout=30)
        spool.wait_until(lambda: spool.queue() == [], "the outbox to drain", timeout=15)
        assert daemon.stop() == 0
    tags = received_tags(relay)
    twice = {tag: n for tag, n in Counter(tags).items() if n > 1}
    assert len(acked) == ROUNDS * PER_ROUND
    assert not twice, f"{len(twice)} of {len(acked)} messages arrived more than once: {sorted(twice)[:10]}" \
                      + daemon.log_tail()


@pytest.mark.timeout(120)
async def test_an_application_submitting_while_the_daemon_starts_gets_each_message_delivered_once(
        spool: Spool, relay: Sink, daemon: Daemon) -> None:
    """`Spooler.start(deliver=False)`, as an application embeds msgspool next to a daemon: its
    commits and wakeups race the daemon's start, and still nothing arrives twice."""
    relay.start()
    app = Spooler(Settings(data_dir=str(spool.data), relay=relay.address))
    await app.start(deliver=False)
    tags = [f"app-{i:04d}" for i in range(ROUNDS * PER_ROUND)]
    try:
        starting = asyncio.get_running_loop().run_in_executor(None, daemon.start)
        for tag in tags:
            await app.send(tagged_message(tag, to=f"{tag}@example.com", newline="\r\n").encode(),
                           sender="app@example.org", recipients=[f"{tag}@example.com"])
            await asyncio.sleep(0.002)
        await starting
    finally:
        await app.stop()
    await asyncio.to_thread(spool.wait_until, lambda: set(received_tags(relay)) >= set(tags),
                            "every message at the relay", timeout=30)
    await asyncio.to_thread(spool.wait_until, lambda: spool.queue() == [], "the outbox to drain", timeout=15)
    twice = {tag: n for tag, n in Counter(received_tags(relay)).items() if n > 1}
    assert not twice, f"{len(twice)} messages arrived more than once: {sorted(twice)[:10]}" + daemon.log_tail()


@pytest.mark.timeout(120)
def test_a_killed_delivery_process_is_respawned_at_once_and_intake_keeps_acknowledging(
        spool: Spool, relay: Sink, daemon: Daemon) -> None:
    """Issue 10.3: parts fail alone. kill -9 of the delivery process under a steady SMTP load:
    intake goes on answering DATA without a stall, a new delivery process runs within a second
    or so, and every acknowledged message arrives without a daemon restart."""
    relay.start()
    daemon.start()
    first = spool.status()["spooler"]["delivery"]["pid"]
    stop = threading.Event()
    latencies: list[tuple[float, float]] = []  # (when, how long DATA took)
    acked: set[str] = set()

    def load() -> None:
        with smtplib.SMTP(*daemon.smtp_address, timeout=15) as smtp:
            i = 0
            while not stop.is_set():
                tag = f"k-{i:05d}"
                started = time.monotonic()
                assert not smtp.sendmail("load@example.org", [f"{tag}@example.com"],
                                         tagged_message(tag, to=f"{tag}@example.com", newline="\r\n"))
                latencies.append((started, time.monotonic() - started))
                acked.add(tag)
                i += 1
                time.sleep(0.005)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)

        def respawned() -> bool:
            delivery = spool.status()["spooler"].get("delivery") or {}
            return delivery.get("pid") not in (None, first)

        spool.wait_until(respawned, "a new delivery process", timeout=10, interval=0.02)
        respawn = time.monotonic() - killed_at
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(20)
    after = [took for when, took in latencies if when >= killed_at]
    assert after, "no DATA was answered after the kill"
    assert max(after) < 1.0, f"intake stalled for {max(after):.2f} s after the delivery process was killed"
    assert respawn < 3.0, f"the delivery process came back after {respawn:.2f} s"
    spool.wait_until(lambda: set(received_tags(relay)) >= acked, "every acknowledged message at the relay",
                     timeout=30)
    spool.wait_until(lambda: spool.queue() == [], "the outbox to drain (nothing left active)", timeout=15)
    print(f"acknowledged={len(acked)} respawn={respawn:.3f}s worst-DATA-after-kill={max(after) * 1000:.1f}ms")
