"""What one relayed message costs the store: ``python -m bench.statements [--store sqlite|postgresql] [-n N]``.

A spooler in this process (intake and delivery in one, as `serve` with delivery_process = false)
relays N one-recipient messages, submitted CONCURRENCY at a time through the Python API, to a
recording sink; the store's statements are counted on the way. Prints, per relayed message:
statements; round trips — what a PostgreSQL server costs: a statement each, an executemany once
(psycopg pipelines it), BEGIN and COMMIT for each transaction (on SQLite the same count is calls
into the library); transactions; and how many writes group commit put in each. Not a timed benchmark:
the figures do not depend on the machine or its load, so a change to the steps (stores/ops.py)
can be judged by them while other work runs — `make bench` gives the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.procs import free_port
from bench.sink import SinkProcess
from msgspool.config import Settings
from msgspool.spooler.intake import Submission
from msgspool.spooler.runtime import Spooler

CONCURRENCY = 50
DEFAULT_URL = os.environ.get("MSGSPOOL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def counting(store: str) -> Iterator[Counter[str]]:
    """Count every statement the store sends while in the block: at psycopg's cursors on
    PostgreSQL (whatever module sends it), at the connection class on SQLite."""
    counts: Counter[str] = Counter()
    if store == "postgresql":
        import psycopg

        cls: Any = psycopg.Cursor
    else:
        from msgspool.stores.sqlite import SQLiteConnection

        cls = SQLiteConnection
    execute, executemany = cls.execute, cls.executemany

    def counted_execute(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        counts["statements"] += 1
        counts[f"  {_shape(query)}"] += 1
        return execute(self, query, *args, **kw)

    def counted_executemany(self: Any, query: Any, params: Any, *args: Any, **kw: Any) -> Any:
        params = list(params)
        counts["statements"] += len(params)
        counts["executemany rows"] += len(params)
        counts["executemany"] += 1  # pipelined by psycopg: one round trip
        counts[f"  {_shape(query)} (executemany)"] += 1
        return executemany(self, query, params, *args, **kw)

    cls.execute, cls.executemany = counted_execute, counted_executemany
    try:
        yield counts
    finally:
        cls.execute, cls.executemany = execute, executemany


def _shape(query: Any) -> str:
    """A statement's first words, to tell the statements apart in `--by-statement`."""
    text = query.as_string(None) if hasattr(query, "as_string") else str(query)
    return " ".join(text.split())[:90]


def fresh_schema(base_url: str) -> tuple[str, str]:
    import psycopg

    schema = f"msgspool_statements_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"


def drop_schema(base_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def relay(settings: Settings, sink: SinkProcess, n: int, counts: Counter[str]) -> dict[str, float]:
    spooler = Spooler(settings)
    await spooler.start(deliver=True)
    try:
        before = Counter(counts)
        commits0, jobs0 = spooler.store.commit_stats
        t0 = time.perf_counter()
        for start in range(0, n, CONCURRENCY):
            await asyncio.gather(*(spooler.submit(Submission(
                "bench@example.org", [f"r{i}@example.com"],
                f"From: bench@example.org\r\nTo: r{i}@example.com\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode()))
                for i in range(start, min(n, start + CONCURRENCY))))
        while len(sink.records()) < n or (await spooler.store.counts()).get("messages", 0):
            if time.perf_counter() - t0 > 300:
                raise SystemExit("not everything was relayed within 300 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the last outcomes' commits
        commits1, jobs1 = spooler.store.commit_stats
        spent = Counter(counts)
        spent.subtract(before)
        singles = spent["statements"] - spent["executemany rows"]
        by_statement = {k: v / n for k, v in spent.most_common() if k.startswith("  ") and v}
        return {"statements": spent["statements"] / n,
                "round trips": (singles + spent["executemany"] + 2 * (commits1 - commits0)) / n,
                "transactions": (commits1 - commits0) / n,
                "writes per transaction": (jobs1 - jobs0) / max(1, commits1 - commits0), **by_statement}
    finally:
        await spooler.stop()


def measure(store: str, n: int, database_url: str = DEFAULT_URL) -> dict[str, float]:
    with counting(store) as counts, tempfile.TemporaryDirectory(prefix="msgspool-statements-") as tmp:
        sink = SinkProcess(free_port(), Path(tmp) / "sink.log").start()
        schema = ""
        try:
            extra: dict[str, Any] = {}
            if store == "postgresql":
                schema, url = fresh_schema(database_url)
                extra = {"store": "postgresql", "database_url": url}
            settings = Settings(data_dir=str(Path(tmp) / "spool"), relay=f"127.0.0.1:{sink.port}",
                                smtp_listen="", http_listen="", delivery_process=False, **extra)
            return asyncio.run(relay(settings, sink, n, counts))
        finally:
            sink.stop()
            if schema:
                drop_schema(database_url, schema)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.statements", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("-n", type=int, default=1000, help="messages to relay")
    ap.add_argument("--database-url", default=DEFAULT_URL, help="where a fresh schema is made (postgresql)")
    ap.add_argument("--by-statement", action="store_true", help="also each statement's count per message")
    a = ap.parse_args(argv)
    figures = measure(a.store, a.n, a.database_url)
    print(f"{a.store}: {a.n} messages relayed; per message:")
    for name, value in figures.items():
        if a.by_statement or not name.startswith("  "):
            print(f"  {name:<24} {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
