"""The spool is private to the user msgspool runs as: a data directory msgspool creates is 0700 and
every spool file in it 0600 (the database and SQLite's -wal and -shm, the lock files, the control
socket), whatever the umask; a spool left loose (an older msgspool, a umask of 022) is tightened
when the daemon starts, each change logged, and files an operator put there are left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support.daemon import DaemonFactory, Spool, run_cli, tagged_message
from tests.support.sink import Sink

SPOOL_FILES = ("spool.db", "spool.db-wal", "spool.db-shm", "msgspool.lock", "serve.lock", "control.sock")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(data: Path) -> dict[str, int]:
    return {name: mode(data / name) for name in SPOOL_FILES if (data / name).exists()}


def test_serve_creates_the_data_directory_0700_and_every_spool_file_0600(tmp_path: Path, relay: Sink,
                                                                         daemons: DaemonFactory) -> None:
    relay.start()
    data = tmp_path / "fresh"
    daemon = daemons(data, relay.address).start()
    spool = Spool(data)
    spool.daemon = daemon
    spool.sendmail(tagged_message("private"), "rcpt@example.com")
    relay.wait_for(1)
    assert mode(data) == 0o700, daemon.log_tail()
    assert modes(data) == dict.fromkeys(SPOOL_FILES, 0o600), daemon.log_tail()
    assert "tightened" not in daemon.log()
    assert daemon.stop() == 0


def test_sendmail_on_a_new_spool_creates_it_private_under_a_loose_umask(tmp_path: Path) -> None:
    data = tmp_path / "new" / "spool"
    old = os.umask(0o002)
    try:
        result = run_cli("sendmail", "--create", "rcpt@example.com", data=data, stdin=tagged_message("umask"),
                         cwd=tmp_path)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert mode(data) == 0o700
    assert set(modes(data).values()) == {0o600} and "spool.db" in modes(data)


def test_serve_tightens_a_loose_spool_and_logs_each_change(spool: Spool, relay: Sink,
                                                           daemons: DaemonFactory) -> None:
    data = spool.data
    spool.sendmail(tagged_message("before"), "rcpt@example.com")  # private now: loosen it as an old msgspool left it
    (data / "serve.lock").write_text("")
    notes = data / "notes.txt"
    notes.write_text("the operator's\n")
    os.chmod(data, 0o755)
    for path in (data / "spool.db", data / "serve.lock", notes):
        os.chmod(path, 0o644)
    relay.start()
    daemon = daemons(data, relay.address).start()
    spool.daemon = daemon
    relay.wait_for(1)
    assert mode(data) == 0o700, daemon.log_tail()
    assert set(modes(data).values()) == {0o600}, (modes(data), daemon.log_tail())
    assert mode(notes) == 0o644  # not a spool file: the operator's business
    log = daemon.log()
    assert f"spool permissions tightened: {data} 0755 -> 0700" in log, daemon.log_tail()
    assert f"spool permissions tightened: {data / 'spool.db'} 0644 -> 0600" in log, daemon.log_tail()
    assert f"spool permissions tightened: {data / 'serve.lock'} 0644 -> 0600" in log, daemon.log_tail()
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.stop() == 0
    assert daemon.log().count("spool permissions tightened") == 3  # once: the second start found nothing to change
