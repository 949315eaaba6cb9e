"""`msgspool serve` itself: clean SIGTERM, one daemon per spool, clear errors when it cannot start,
and the spool found through MSGSPOOL_DATA like every other command."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from msgspool.hooks.dkim import load_private_key, public_key_record
from tests.support.daemon import Daemon, DaemonFactory, Spool, cli_env, describe, run_cli, tagged_message
from tests.support.sink import Sink
from tests.unit.test_dkim import rsa_pem_of, zone_for


def run_serve(daemon: Daemon, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """A `serve` that is expected to give up: run it to completion."""
    return subprocess.run(daemon.argv(), capture_output=True, text=True, timeout=timeout, env=cli_env(),
                          cwd=daemon.data.parent)


def assert_clear_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("msgspool: "), describe(result)
    for needle in needles:
        assert needle in last, describe(result)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_sigterm_stops_the_daemon_cleanly_and_releases_the_spool(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    daemon.start()
    assert (spool.data / "control.sock").exists()
    assert daemon.stop() == 0, daemon.log_tail()
    assert not (spool.data / "control.sock").exists()
    assert "Traceback" not in daemon.log(), daemon.log_tail()
    relay.start()
    spool.sendmail(tagged_message("after-restart"), "-t")
    daemon.start()  # the lock was released
    spool.wait_for_sink(relay, 1, timeout=5.0)


def test_second_daemon_on_the_same_spool_refuses_and_leaves_the_first_reachable(
        spool: Spool, relay: Sink, daemon: Daemon, daemons: DaemonFactory) -> None:
    relay.start()
    daemon.start()
    second = daemons(spool.data, relay.address)
    assert_clear_failure(run_serve(second), "another msgspool process", str(spool.data))

    assert daemon.running
    assert (spool.data / "control.sock").exists(), "the failed second daemon removed the first one's control socket"
    assert spool.status()["spooler"]["status"] == "online"
    submitted = time.monotonic()
    spool.sendmail(tagged_message("still-woken"), "-t")
    assert spool.wait_for_sink(relay, 1, timeout=5.0) - submitted < 5.0  # the wake-up still reaches the daemon


@pytest.mark.parametrize("listener", ["smtp", "http"])
def test_serve_on_a_busy_port_is_a_clear_error(spool: Spool, relay: Sink, daemons: DaemonFactory, busy_port: int,
                                               listener: str) -> None:
    failing = daemons(spool.data, relay.address)
    if listener == "smtp":
        failing.smtp_port = busy_port
    else:
        failing.http_port = busy_port
    assert_clear_failure(run_serve(failing), f"127.0.0.1:{busy_port}")
    assert not (spool.data / "control.sock").exists()
    spool.daemon = daemons(spool.data, relay.address).start()  # the spool was not left locked
    assert spool.daemon.stop() == 0


def test_serve_with_a_spool_path_too_long_for_the_control_socket_is_a_clear_error(tmp_path: Path, relay: Sink,
                                                                                  daemons: DaemonFactory) -> None:
    data = tmp_path / ("d" * 60) / ("e" * 60) / "spool"  # AF_UNIX paths are limited to ~107 bytes
    data.mkdir(parents=True)
    assert_clear_failure(run_serve(daemons(data, relay.address)), "control socket")


DKIM_CONFIG = """
[[hooks]]
name = "dkim"
type = "dkim_sign"
keys = [{ domain = "example.org", selector = "sel", key_file = "dkim/example.org.key" }]
"""


def dkim_spool(spool: Spool, mode: int) -> Path:
    """A dkim_sign config beside the spool, its key (relative: in the data directory) with `mode`."""
    (spool.data / "dkim").mkdir()
    key = spool.data / "dkim" / "example.org.key"
    key.write_bytes(rsa_pem_of(2048))
    key.chmod(mode)
    config = spool.data.parent / "dkim.toml"
    config.write_text(DKIM_CONFIG)
    return config


def test_serve_with_a_dkim_key_others_may_read_exits_2_naming_the_file(spool: Spool, relay: Sink,
                                                                       daemons: DaemonFactory) -> None:
    config = dkim_spool(spool, 0o644)
    result = run_serve(daemons(spool.data, relay.address, extra_args=["--config", str(config)]))
    assert result.returncode == 2, describe(result)
    assert_clear_failure(result, f"DKIM key {spool.data / 'dkim' / 'example.org.key'} has mode 0644", "chmod 600")


def test_serve_with_dkim_sign_relays_mail_that_verifies(spool: Spool, relay: Sink, daemons: DaemonFactory) -> None:
    config = dkim_spool(spool, 0o600)
    relay.start()
    spool.daemon = daemons(spool.data, relay.address, extra_args=["--config", str(config)]).start()
    spool.sendmail(tagged_message("signed"), "-t")
    spool.wait_for_sink(relay, 1)
    record = public_key_record(load_private_key(spool.data / "dkim" / "example.org.key"))
    zone = zone_for({"sel._domainkey.example.org": record})
    assert dkim.verify(relay.messages[0].content, dnsfunc=zone), relay.messages[0].content[:600]
    assert spool.daemon.stop() == 0


def test_every_command_finds_the_spool_through_msgspool_data(tmp_path: Path, spool: Spool) -> None:
    env = {"MSGSPOOL_DATA": str(spool.data)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sent = run_cli("sendmail", "--create", "-t", stdin=tagged_message("env"), env=env, cwd=elsewhere)
    assert sent.returncode == 0, describe(sent)
    listed = run_cli("queue", "list", "--json", env=env, cwd=elsewhere)
    assert listed.returncode == 0 and '"rcpt@example.com"' in listed.stdout, describe(listed)
    assert len(spool.queue()) == 1
    assert not (elsewhere / "msgspool-data").exists()
