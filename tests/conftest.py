"""Fixtures shared by every layer of tests."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import ENVIRONMENT, Settings
from msgspool.spooler.runtime import Spooler
from tests.support import dovecot, pg
from tests.support.receiver import Receiver
from tests.support.sink import Sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    yield s
    s.stop()


DOVECOT_USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


@pytest.fixture
def dovecot_server() -> Iterator[dovecot.Dovecot]:
    """A real Dovecot (LMTP, POP3, IMAP; tests/support/dovecot.py) with DOVECOT_USERS."""
    with dovecot.start(DOVECOT_USERS) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A test that fails while a Dovecot runs shows that Dovecot's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in dovecot.RUNNING:
            report.sections.append((f"dovecot log ({server.directory})", server.log()[-20000:]))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver (a real local HTTP server), not started: tests bring it up with `start()`."""
    r = Receiver()
    yield r
    r.stop()


# The store the in-process tests run on: SQLite, or with MSGSPOOL_TEST_STORE=postgresql a fresh
# PostgreSQL database per test (the `_store_under_test` fixture) — so the same tests prove that
# every part works on either store (issue 11.2; .ci/run runs tests/integration both ways).
STORE_UNDER_TEST = os.environ.get("MSGSPOOL_TEST_STORE", "sqlite")
sqlite_only = pytest.mark.skipif(STORE_UNDER_TEST != "sqlite", reason="about the SQLite store itself")
_store_settings: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _store_under_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if STORE_UNDER_TEST != "postgresql":
        yield
        return
    with pg.fresh_database() as url:
        _store_settings.update(store="postgresql", database_url=url)
        monkeypatch.setenv(ENVIRONMENT["store"], "postgresql")  # the CLI's store too
        monkeypatch.setenv(ENVIRONMENT["database_url"], url)
        try:
            yield
        finally:
            _store_settings.clear()


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test spool: fast retries and probes, no listeners unless asked; on the store
    under test."""
    settings = Settings(data_dir=str(data_dir), smtp_listen="", http_listen="", hostname="mx.test",
                        min_backoff=60.0, probe_min=0.1, probe_max=0.5, connection_idle_time=0.5)
    settings.merge({**_store_settings, **overrides}, "test")
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
            await stop_within(spooler, STOP_WITHIN)

    return factory


STOP_WITHIN = 30.0  # far more than a stop takes; below pytest's timeout, so a hang shows where it is


async def stop_within(spooler: Spooler, seconds: float) -> None:
    """Stop the spooler; one that does not stop in time fails the test with every task's and
    thread's stack (a stop that hung once on PostgreSQL left only pytest's timeout to go on)."""
    stopping = asyncio.ensure_future(spooler.stop())
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    if not done:
        where = stacks()
        stopping.cancel()
        raise AssertionError(f"Spooler.stop did not end within {seconds:g} s\n{where}")
    stopping.result()


def stacks() -> str:
    """Where every asyncio task of this loop and every thread is."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=out)
        task.print_stack(file=out)
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"--- thread {names.get(ident, ident)}", file=out)
        traceback.print_stack(frame, file=out)
    return out.getvalue()


GUARD = "recipient state change not allowed"  # the store's trigger (stores/sqlite.py transition_guard_sql)


@pytest.fixture(autouse=True)
def _every_state_change_is_in_the_table(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Issue 11.1: the whole suite proves that every recipient state change the code makes is in
    domain/recipient.py's table — the store refuses any other, and a refusal logged anywhere in a
    test fails it (a store error on a delivery path is retried and logged, not raised)."""
    yield
    refused = [r.getMessage() for r in caplog.records if GUARD in r.getMessage() or (
        r.exc_info and GUARD in str(r.exc_info[1]))]
    assert not refused, f"a state change outside the table: {refused[:3]}"
