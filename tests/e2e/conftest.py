"""Fixtures for end-to-end tests: a spool directory, a relay sink that starts DOWN, and the daemon
as a subprocess (`msgspool serve --data D --smtp ... --http ... --relay SINK`).

The relay is given only on serve's command line, as a user does: `msgspool sendmail` must leave
routing to the daemon (no msgspool.toml in the spool directory).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonFactory, Spool
from tests.support.sink import Sink


@pytest.fixture
def relay() -> Iterator[Sink]:
    """The relay destination, not started: tests bring it up with `relay.start()`."""
    s = Sink()
    yield s
    s.stop()


@pytest.fixture
def daemons() -> Iterator[DaemonFactory]:
    factory = DaemonFactory()
    yield factory
    factory.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    data = tmp_path / "spool"
    data.mkdir()
    return Spool(data)


@pytest.fixture
def daemon(spool: Spool, relay: Sink, daemons: DaemonFactory) -> Daemon:
    """The daemon of `spool`, not started; killed at teardown whatever happens."""
    d = daemons(spool.data, relay.address)
    spool.daemon = d
    return d
