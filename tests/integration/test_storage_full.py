"""The store on a real full file system (a small tmpfs, every free byte taken by one file): a
submission fails as `StorageFull` and leaves nothing of itself behind, the same submission goes
through once the file is removed, and an SQLite I/O error counts as "no room" exactly when the
spool's file system has none left."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from msgspool.errors import StorageFull
from msgspool.spooler.runtime import Spooler
from msgspool.stores.sqlite import storage_error
from tests.conftest import make_settings, sqlite_only
from tests.integration.test_relay import submission, wait_status
from tests.support.sink import Sink
from tests.support.tmpfs import fill, small_tmpfs

BIG = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1024  # 1 MB


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small") as where:
        yield where


@pytest.fixture
async def spooler(small: Path, sink: Sink) -> AsyncIterator[Spooler]:
    spooler = Spooler(make_settings(small / "spool", relay=sink.address))
    await spooler.start()
    try:
        yield spooler
    finally:
        await spooler.stop()


@sqlite_only
async def test_a_submission_on_a_full_disk_is_storage_full_and_leaves_nothing_behind(
        spooler: Spooler, small: Path, sink: Sink) -> None:
    fill(small / "filler")
    counts = await spooler.store.counts()
    with pytest.raises(StorageFull) as refused:
        await spooler.submit(submission("b@example.com", content=BIG))
    assert refused.value.reply.line() == "452 4.3.1 Insufficient system storage"
    assert await spooler.store.counts() == counts
    (small / "filler").unlink()
    message_id = await spooler.submit(submission("b@example.com", content=BIG))
    await wait_status(spooler, message_id, {"delivered"})
    assert sink.count() == 1


def test_an_sqlite_io_error_is_storage_full_only_while_the_file_system_is_full(small: Path) -> None:
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = 10 | (3 << 8)  # type: ignore[attr-defined]  # SQLITE_IOERR_WRITE
    assert storage_error(io_error, small) is io_error
    fill(small / "filler")
    assert isinstance(storage_error(io_error, small), StorageFull)
    (small / "filler").unlink()
    assert storage_error(io_error, small) is io_error
