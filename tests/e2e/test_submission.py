"""Submission with AUTH as an operator runs it: `msgspool user add` with the password on stdin,
`msgspool serve --config` with a certificate and `submission_listen`, a mail client (smtplib)
that logs in after STARTTLS and relays, and `user delete` taking effect on the running daemon."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest
import trustme

from tests.integration.test_smtpd_tls import CertFiles
from tests.support.daemon import DaemonFactory, Spool
from tests.support.sink import Sink, free_port

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: submitted\r\n\r\nHello.\r\n"
PASSWORD = "a long pass phrase for alice"


def submission_config(spool: Spool, certs: CertFiles, port: int) -> Path:
    config = spool.data.parent / "submission.toml"
    config.write_text(f'tls_cert_file = "{certs.cert}"\ntls_key_file = "{certs.key}"\n'
                      f'submission_listen = "127.0.0.1:{port}"\ntrusted_networks = []\n'
                      'local_domains = ["example.org"]\nsmtpd_auth_failure_delay = 0.0\n')
    return config


def test_serve_with_submission_listen_relays_for_a_user_who_logged_in(
        spool: Spool, relay: Sink, daemons: DaemonFactory, tmp_path: Path) -> None:
    certs = CertFiles(trustme.CA(), tmp_path / "cert.pem", tmp_path / "key.pem")
    certs.issue("mx.test", "127.0.0.1")
    spool.run("user", "add", "alice@example.org", stdin=PASSWORD + "\n")
    port = free_port()
    relay.start()
    daemon = daemons(spool.data, relay.address,
                     extra_args=["--config", str(submission_config(spool, certs, port))])
    spool.daemon = daemon.start(also=[port])

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=certs.client_context())
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # no AUTH yet
            client.sendmail("alice@example.org", ["bob@example.com"], MESSAGE)
        assert refused.value.smtp_code == 530
        client.login("alice@example.org", PASSWORD)
        assert client.sendmail("alice@example.org", ["bob@example.com"], MESSAGE) == {}
    spool.wait_for_sink(relay, 1)
    assert b" with ESMTPSA (TLSv1." in relay.messages[0].content
    (message,) = [json.loads(line) for line in spool.run("queue", "list", "--json", "--all").stdout.splitlines()]
    history = spool.show(message["id"])["history"]
    assert any("authenticated user alice@example.org" in h["detail"] for h in history), history

    spool.run("user", "delete", "alice@example.org")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=certs.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice@example.org", PASSWORD)
        assert failed.value.smtp_code == 535
    assert PASSWORD not in daemon.log()
    assert daemon.stop() == 0
