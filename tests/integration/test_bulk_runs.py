"""spooler/bulk.py on a real spool (SQLite and PostgreSQL, through the Spooler's own operations):
chunks, progress, a message gone between selecting and acting, and what a run leaves alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import msgspool
from msgspool.domain.selector import parse_selector
from msgspool.spooler import bulk
from msgspool.spooler.intake import Submission
from tests.support import pg


@pytest.fixture(params=["sqlite", "postgresql"])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    with pg.fresh_database() as url:
        yield {"store": "postgresql", "database_url": url}


def message(n: int, rcpt: str = "x@one.test") -> Submission:
    return Submission(sender=f"s{n}@alpha.test", recipients=[rcpt], content=f"Subject: {n}\r\n\r\nbody\r\n".encode())


async def test_a_run_acts_a_chunk_at_a_time_skipping_what_went_meanwhile(tmp_path: Path,
                                                                        store_settings: dict[str, Any]) -> None:
    async with msgspool.open_spool(str(tmp_path / "spool"), deliver=False, relay="127.0.0.1:9",
                                   **store_settings) as spooler:
        ids = [await spooler.submit(message(n)) for n in range(7)]
        other = await spooler.submit(message(99, "y@two.test"))
        where = parse_selector("recipient=@one.test")
        selected = await bulk.select(spooler.store, where, chunk=3)
        assert selected == sorted(ids)
        await spooler.delete([selected[4]])  # gone between the selection and its chunk
        seen: list[tuple[int, int]] = []

        async def apply(action: str, chunk: list[str]) -> dict[str, object]:
            return await bulk.apply_chunk(spooler, action, chunk)

        # A run selects again from the start: the deleted one is not among its 6.
        result = await bulk.run(spooler.store, apply, "hold", where, chunk=4,
                                progress=lambda done, total: seen.append((done, total)))
        assert (len(result.selected), sorted(result.done), seen) == (6, sorted(set(ids) - {selected[4]}),
                                                                     [(4, 6), (6, 6)])
        # A chunk naming a message deleted since: the rest is done, the missing one skipped.
        answer = await bulk.apply_chunk(spooler, "release", selected)
        assert sorted(answer["ids"]) == sorted(set(ids) - {selected[4]})
        info = await spooler.message(other)
        assert [r["status"] for r in info["recipients"]] == ["queued"] and info["held"] is False
        dry = await bulk.run(spooler.store, apply, "delete", where, dry_run=True)
        assert dry.to_json()["matched"] == 6 and dry.done == []
        assert len(await bulk.select(spooler.store, where)) == 6  # a dry run changed nothing


async def test_a_run_reads_each_chunk_once_before_acting_not_each_message_whole(
        tmp_path: Path, store_settings: dict[str, Any]) -> None:
    """A chunk of an action asks the store which of its messages exist in one read; no message
    is read whole (five statements each) on the way."""
    async with msgspool.open_spool(str(tmp_path / "spool"), deliver=False, relay="127.0.0.1:9",
                                   **store_settings) as spooler:
        ids = [await spooler.submit(message(n)) for n in range(12)]
        store = spooler.store
        reads = {"get": 0, "existing": 0}
        get, existing = store.get, store.existing

        async def counted_get(message_id: str) -> Any:
            reads["get"] += 1
            return await get(message_id)

        async def counted_existing(chunk: Any) -> set[str]:
            reads["existing"] += 1
            return await existing(chunk)

        store.get, store.existing = counted_get, counted_existing  # type: ignore[method-assign]
        for action in ("hold", "release", "requeue", "flush", "delete"):
            result = await bulk.run(store, lambda a, chunk: bulk.apply_chunk(spooler, a, chunk), action,
                                    parse_selector("recipient=@one.test"), chunk=5)
            assert sorted(result.done) == sorted(ids), action
        assert reads == {"get": 0, "existing": 5 * 3}, reads  # five actions, three chunks each, one read a chunk
