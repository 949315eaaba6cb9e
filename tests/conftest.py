"""Fixtures shared by every layer of tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.spooler.runtime import Spooler
from tests.support.receiver import Receiver
from tests.support.sink import Sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver (a real local HTTP server), not started: tests bring it up with `start()`."""
    r = Receiver()
    yield r
    r.stop()


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test spool: fast retries and probes, no listeners unless asked."""
    settings = Settings(data_dir=str(data_dir), smtp_listen="", http_listen="", hostname="mx.test",
                        min_backoff=60.0, probe_min=0.1, probe_max=0.5, connection_idle_time=0.5)
    settings.merge(overrides, "test")
    return settings


SpoolerFactory = Callable[..., AbstractAsyncContextManager[Spooler]]


@pytest.fixture
def spooler_factory(tmp_path: Path) -> SpoolerFactory:
    @asynccontextmanager
    async def factory(deliver: bool = True, **overrides: Any) -> AsyncIterator[Spooler]:
        spooler = Spooler(make_settings(tmp_path / "spool", **overrides))
        await spooler.start(deliver=deliver)
        try:
            yield spooler
        finally:
            await spooler.stop()

    return factory
