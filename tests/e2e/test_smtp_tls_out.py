"""Outbound TLS and AUTH as an operator runs them: `msgspool serve --config` relaying to a sink that
speaks STARTTLS (a test CA's certificate) and wants AUTH; `queue show` and the daemon's log say the
delivery used TLS and which account, and the password is nowhere in them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.test_daemon import assert_clear_failure, run_serve
from tests.integration.test_smtp_tls_out import PASSWORD, server_context
from tests.support.daemon import DaemonFactory, Spool, tagged_message
from tests.support.sink import Sink


@pytest.fixture
def secure_relay() -> Iterator[tuple[Sink, trustme.CA]]:
    ca = trustme.CA()
    sink = Sink(tls=server_context(ca, "127.0.0.1"), accounts={"app": PASSWORD}).start()
    yield sink, ca
    sink.stop()


def test_serve_relays_over_verified_starttls_with_auth_and_queue_show_says_so(
        spool: Spool, daemons: DaemonFactory, secure_relay: tuple[Sink, trustme.CA], tmp_path: Path) -> None:
    sink, ca = secure_relay
    ca_file, password_file = tmp_path / "ca.pem", tmp_path / "relay-password"
    ca.cert_pem.write_to_path(str(ca_file))
    password_file.write_text(PASSWORD + "\n")
    config = tmp_path / "out.toml"
    config.write_text(f'smtp_tls_security_level = "verify"\nsmtp_tls_ca_file = "{ca_file}"\n'
                      f'relay_user = "app"\nrelay_password_file = "{password_file}"\n')
    spool.run("sendmail", "--create", "rcpt@example.com", stdin=tagged_message("tls-out"))
    message_id = spool.only_id()
    daemon = daemons(spool.data, sink.address, extra_args=["--config", str(config)])
    spool.daemon = daemon.start()
    spool.wait_for_sink(sink, 1)
    assert [(m.tls, m.user) for m in sink.messages] == [("TLSv1.3", "app")]

    def shown() -> str:
        out = spool.run("queue", "show", message_id).stdout
        return out if "delivered" in out else ""

    out = spool.wait_until(shown, "the recipient delivered in queue show")
    assert f"relay=127.0.0.1[127.0.0.1]:{sink.port} tls=TLSv1.3 user=app" in out
    assert daemon.stop() == 0
    log = daemon.log()
    assert any("status=sent" in line and "tls=TLSv1.3 user=app" in line for line in log.splitlines()), log
    assert PASSWORD not in log and PASSWORD not in out


def test_serve_with_an_unreadable_relay_password_file_exits_2_naming_it(
        spool: Spool, daemons: DaemonFactory, tmp_path: Path) -> None:
    config = tmp_path / "out.toml"
    config.write_text(f'relay_user = "app"\nrelay_password_file = "{tmp_path / "no-such-file"}"\n')
    result = run_serve(daemons(spool.data, "127.0.0.1:9", extra_args=["--config", str(config)]))
    assert result.returncode == 2
    assert_clear_failure(result, "cannot use the password file of app", "no-such-file")
