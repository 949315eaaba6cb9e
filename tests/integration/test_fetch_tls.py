"""Fetch over TLS against Debian's Dovecot with a certificate from a test CA (trustme): implicit TLS
(POP3S, IMAPS) and STARTTLS/STLS, the certificate verified by default — with the account's ca_file it
is trusted, without it (the system's CAs) the session fails before any password is sent, and
``verify = false`` only encrypts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from msgspool.errors import FetchError
from tests.conftest import DOVECOT_USERS, SpoolerFactory
from tests.integration.test_fetch_pop3 import MAILBOX, fetcher, message, subjects
from tests.support import dovecot


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_dovecot(ca: trustme.CA, tmp_path: Path) -> Iterator[dovecot.Dovecot]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    key.chmod(0o644)  # Dovecot's config reader, as root or as the test's user
    with dovecot.start(DOVECOT_USERS, tls=(chain, key)) as server:
        yield server


def account(tmp_path: Path, protocol: str, port: int, security: str, **kw: Any) -> dict[str, Any]:
    secret = tmp_path / "alice.password"
    secret.write_text(DOVECOT_USERS["alice"] + "\n")
    return {"name": "work", "protocol": protocol, "host": "127.0.0.1", "port": port, "security": security,
            "user": "alice", "password_file": str(secret), "mailbox": MAILBOX, **kw}


@pytest.mark.parametrize(("protocol", "security"), [("pop3", "tls"), ("pop3", "starttls"),
                                                    ("imap", "tls"), ("imap", "starttls")])
async def test_a_server_whose_certificate_the_ca_file_trusts_is_fetched_from(
        spooler_factory: SpoolerFactory, tls_dovecot: dovecot.Dovecot, ca: trustme.CA, tmp_path: Path,
        protocol: str, security: str) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ports = {("pop3", "tls"): tls_dovecot.pop3s_port, ("pop3", "starttls"): tls_dovecot.pop3_port,
             ("imap", "tls"): tls_dovecot.imaps_port, ("imap", "starttls"): tls_dovecot.imap_port}
    tls_dovecot.deliver("alice", message(f"over {protocol} {security}"))
    table = account(tmp_path, protocol, ports[protocol, security], security, ca_file=str(ca_file))
    async with spooler_factory(fetch=[table]) as spooler:
        assert await fetcher(spooler).once() == 1
        assert await subjects(spooler) == [f"over {protocol} {security}"]
    assert "Login: user=<alice>" in tls_dovecot.log() and "TLS" in tls_dovecot.log()


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
async def test_an_unknown_ca_fails_before_the_login_and_verify_false_only_encrypts(
        spooler_factory: SpoolerFactory, tls_dovecot: dovecot.Dovecot, tmp_path: Path, protocol: str) -> None:
    port = tls_dovecot.pop3s_port if protocol == "pop3" else tls_dovecot.imaps_port
    tls_dovecot.deliver("alice", message("unchecked"))
    async with spooler_factory(fetch=[account(tmp_path, protocol, port, "tls")]) as spooler:
        f = fetcher(spooler)
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            await f.once()
        assert f.row()["status"] == "failure"
    assert "Login: user=<alice>" not in tls_dovecot.log()
    async with spooler_factory(fetch=[account(tmp_path, protocol, port, "tls", verify=False)]) as spooler:
        assert await fetcher(spooler).once() == 1


async def test_starttls_on_a_server_without_it_fails_and_sends_no_password(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot, tmp_path: Path) -> None:
    for protocol, port in (("pop3", dovecot_server.pop3_port), ("imap", dovecot_server.imap_port)):
        async with spooler_factory(fetch=[account(tmp_path, protocol, port, "starttls")]) as spooler:
            with pytest.raises(FetchError, match=r"STLS refused|STARTTLS failed"):
                await fetcher(spooler).once()
    assert "Login: user=<alice>" not in dovecot_server.log()
