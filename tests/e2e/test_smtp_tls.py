"""Inbound TLS as an operator runs it: `msgspool serve --config` with a certificate (made by a test
CA), STARTTLS on the SMTP port and implicit TLS on `smtps_listen`, the certificate reloaded on
SIGHUP, and the clear failure when a certificate is missing. The daemon runs on its own event
loop (uvloop when installed), which the integration tests do not."""

from __future__ import annotations

import shutil
import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.e2e.test_daemon import assert_clear_failure, run_serve
from tests.integration.test_smtpd_tls import ESMTPS, CertFiles
from tests.support.daemon import Daemon, DaemonFactory, Spool
from tests.support.sink import Sink, free_port

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: tls\r\n\r\nHello.\r\n"


def tls_config(spool: Spool, certs: CertFiles, smtps_port: int) -> Path:
    config = spool.data.parent / "tls.toml"
    config.write_text(f'tls_cert_file = "{certs.cert}"\ntls_key_file = "{certs.key}"\n'
                      f'smtps_listen = "127.0.0.1:{smtps_port}"\n')
    return config


def peer_names(sock: object) -> list[str]:
    assert isinstance(sock, ssl.SSLSocket)
    cert = sock.getpeercert()
    assert cert is not None
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


def test_serve_offers_starttls_and_implicit_tls_and_reloads_the_certificate_on_sighup(
        spool: Spool, relay: Sink, daemons: DaemonFactory, tmp_path: Path) -> None:
    certs = CertFiles(trustme.CA(), tmp_path / "cert.pem", tmp_path / "key.pem")
    certs.issue("mx.test", "127.0.0.1")
    smtps_port = free_port()
    relay.start()
    daemon = daemons(spool.data, relay.address, extra_args=["--config", str(tls_config(spool, certs, smtps_port))])
    spool.daemon = daemon.start(also=[smtps_port])
    context = certs.client_context()
    context.check_hostname = False  # the renewed certificate names another host

    with smtplib.SMTP(*daemon.smtp_address, timeout=5) as client:
        client.starttls(context=context)
        assert peer_names(client.sock) == ["mx.test"]
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
    with smtplib.SMTP_SSL("127.0.0.1", smtps_port, timeout=5, context=context) as client:
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
    spool.wait_for_sink(relay, 2)
    assert all(ESMTPS.search(m.content) for m in relay.messages), spool.context()

    certs.issue("renewed.test", "127.0.0.1")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    names: list[str] = []
    while time.monotonic() < deadline:
        with smtplib.SMTP_SSL("127.0.0.1", smtps_port, timeout=5, context=context) as client:
            names = peer_names(client.sock)
        if names == ["renewed.test"]:
            break
        time.sleep(0.05)
    assert names == ["renewed.test"], spool.context()
    assert daemon.running and daemon.stop() == 0


def test_serve_with_smtps_listen_and_no_certificate_exits_2_with_a_clear_message(
        spool: Spool, relay: Sink, daemons: DaemonFactory) -> None:
    config = spool.data.parent / "tls.toml"
    config.write_text(f'smtps_listen = "127.0.0.1:{free_port()}"\n')
    result = run_serve(daemons(spool.data, relay.address, extra_args=["--config", str(config)]))
    assert result.returncode == 2
    assert_clear_failure(result, "smtps_listen needs a certificate")


def test_serve_with_a_certificate_that_cannot_be_read_exits_2_naming_it(
        spool: Spool, relay: Sink, daemons: DaemonFactory, tmp_path: Path) -> None:
    config = spool.data.parent / "tls.toml"
    config.write_text(f'tls_cert_file = "{tmp_path / "none.pem"}"\ntls_key_file = "{tmp_path / "none.key"}"\n')
    result = run_serve(daemons(spool.data, relay.address, extra_args=["--config", str(config)]))
    assert result.returncode == 2
    assert_clear_failure(result, "cannot load the TLS certificate", str(tmp_path / "none.pem"))


def test_sighup_without_a_certificate_reloads_and_leaves_the_daemon_running(spool: Spool, daemon: Daemon) -> None:
    daemon.start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert daemon.running, spool.context()
    with smtplib.SMTP(*daemon.smtp_address, timeout=5) as client:
        assert client.noop()[0] == 250
    assert daemon.stop() == 0
    assert "SIGHUP: reloading the configuration" in daemon.log() and "configuration reloaded" in daemon.log()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_sends_over_starttls_and_over_implicit_tls(spool: Spool, relay: Sink, daemons: DaemonFactory,
                                                          tmp_path: Path) -> None:
    certs = CertFiles(trustme.CA(), tmp_path / "cert.pem", tmp_path / "key.pem")
    certs.issue("mx.test", "127.0.0.1")
    smtps_port = free_port()
    relay.start()
    daemon = daemons(spool.data, relay.address, extra_args=["--config", str(tls_config(spool, certs, smtps_port))])
    spool.daemon = daemon.start()
    for how in (["--server", f"127.0.0.1:{daemon.smtp_port}", "-tls"], ["--server", f"127.0.0.1:{smtps_port}",
                                                                       "-tlsc"]):
        result = subprocess.run(["swaks", *how, "--from", "a@example.org", "--to", "b@example.com",
                                 "--helo", "swaks.test", "--header", "Subject: swaks"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "TLS started" in result.stdout or "TLS started" in result.stderr, result.stdout
    spool.wait_for_sink(relay, 2)
    assert all(ESMTPS.search(m.content) for m in relay.messages), spool.context()
    assert daemon.stop() == 0
