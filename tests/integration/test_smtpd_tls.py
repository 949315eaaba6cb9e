"""Inbound TLS on the SMTP listener (RFC 3207 STARTTLS, RFC 8314 implicit TLS) over real loopback
sockets, with a certificate made by a test CA (trustme): smtplib as the client where a plain
client is the point, raw lines where the exact replies and the pipelining are."""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from msgspool.daemon import SMTPListeners, start_smtp
from msgspool.errors import ConfigError
from msgspool.smtpd.tls import ServerTLS, server_context
from msgspool.spooler.runtime import Spooler
from tests.conftest import SpoolerFactory
from tests.integration.test_smtpd import MESSAGE, Client, ehlo_keywords
from tests.support.sink import Sink, free_port

ESMTPS = re.compile(rb"with ESMTPS \((TLSv1\.[23]) ([A-Z0-9_-]+)\) id ")


@dataclass
class CertFiles:
    ca: trustme.CA
    cert: Path
    key: Path

    def issue(self, *names: str) -> None:
        """A new certificate for `names` in place of the old one (as a renewal writes it)."""
        issued = self.ca.issue_cert(*names)
        self.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(self.key))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> CertFiles:
    files = CertFiles(ca, tmp_path / "cert.pem", tmp_path / "key.pem")
    files.issue("mx.test", "127.0.0.1")
    return files


@dataclass
class TLSListener:
    spooler: Spooler
    listeners: SMTPListeners
    port: int
    smtps_port: int

    async def client(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = Client(reader, writer)
        assert (await client.reply())[0] == 220
        return client


ListenerFactory = Callable[..., AbstractAsyncContextManager[TLSListener]]


@pytest.fixture
def listen(spooler_factory: SpoolerFactory, sink: Sink, certs: CertFiles) -> ListenerFactory:
    @asynccontextmanager
    async def factory(**settings: Any) -> AsyncIterator[TLSListener]:
        port, smtps_port = free_port(), free_port()
        settings = {"relay": sink.address, "smtp_listen": f"127.0.0.1:{port}",
                    "smtps_listen": f"127.0.0.1:{smtps_port}", "local_domains": ["example.org"],
                    "tls_cert_file": str(certs.cert), "tls_key_file": str(certs.key), **settings}
        async with spooler_factory(**settings) as spooler:
            listeners = await start_smtp(spooler, spooler.settings)
            try:
                yield TLSListener(spooler, listeners, port, smtps_port)
            finally:
                listeners.close()

    return factory


async def start_tls(c: Client, context: ssl.SSLContext) -> None:
    await c.writer.start_tls(context, server_hostname="mx.test")


def smtplib_starttls(port: int, context: ssl.SSLContext, recipients: list[str]) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # not offered twice
        return client.sendmail("a@example.org", recipients, MESSAGE)


async def test_starttls_with_smtplib_relays_and_the_received_header_names_the_tls_version_and_cipher(
        listen: ListenerFactory, certs: CertFiles, sink: Sink) -> None:
    async with listen() as listener:
        refused = await asyncio.to_thread(smtplib_starttls, listener.port, certs.client_context(), ["b@example.com"])
        assert refused == {}
        await sink.async_wait_for(1)
    content = sink.messages[0].content
    assert content.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (msgspool) with ESMTPS (")
    assert ESMTPS.search(content) is not None
    assert content.endswith(MESSAGE)


def smtplib_implicit_tls(port: int, context: ssl.SSLContext) -> tuple[dict[str, Any], bool]:
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=5, context=context) as client:
        client.ehlo("client.test")
        offered = client.has_extn("starttls")
        return client.sendmail("a@example.org", ["b@example.com"], MESSAGE), offered


async def test_implicit_tls_with_smtplib_smtp_ssl(listen: ListenerFactory, certs: CertFiles, sink: Sink) -> None:
    async with listen() as listener:
        refused, starttls_offered = await asyncio.to_thread(smtplib_implicit_tls, listener.smtps_port,
                                                            certs.client_context())
        await sink.async_wait_for(1)
    assert refused == {} and not starttls_offered
    assert ESMTPS.search(sink.messages[0].content) is not None


async def test_starttls_is_offered_only_with_a_certificate(listen: ListenerFactory) -> None:
    async with listen() as listener:
        assert "STARTTLS" in await ehlo_keywords(await listener.client())
    async with listen(tls_cert_file="", tls_key_file="", smtps_listen="") as listener:
        c = await listener.client()
        assert "STARTTLS" not in await ehlo_keywords(c)
        assert await c.cmd("STARTTLS") == (502, "5.5.1 Error: command not implemented")
        assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


async def test_commands_pipelined_after_starttls_are_discarded_not_run_encrypted(
        listen: ListenerFactory, certs: CertFiles) -> None:
    """CVE-2011-0411: plaintext sent after STARTTLS in the same packet must not count as encrypted input."""
    async with listen() as listener:
        c = await listener.client()
        assert (await c.cmd("EHLO c"))[0] == 250
        await c.send(b"STARTTLS\r\nHELP\r\nMAIL FROM:<evil@example.org>\r\n")
        assert await c.reply() == (220, "2.0.0 Ready to start TLS")
        await start_tls(c, certs.client_context())
        assert await c.cmd("NOOP") == (250, "2.0.0 Ok")  # the first reply: HELP's 214 never comes
        # and the session was reset: no EHLO, no MAIL from before the handshake
        assert await c.cmd("MAIL FROM:<a@example.org>") == (503, "5.5.1 Error: send HELO/EHLO first")
        assert (await c.cmd("EHLO c"))[0] == 250
        assert await c.cmd("MAIL FROM:<a@example.org>") == (250, "2.1.0 Ok")


async def test_state_is_reset_after_starttls_and_starttls_is_refused_twice_or_inside_a_transaction(
        listen: ListenerFactory, certs: CertFiles) -> None:
    async with listen() as listener:
        c = await listener.client()
        assert (await c.cmd("EHLO c"))[0] == 250
        assert (await c.cmd("MAIL FROM:<a@example.org>"))[0] == 250
        assert await c.cmd("STARTTLS") == (503, "5.5.1 Error: MAIL transaction in progress")
        assert (await c.cmd("RSET"))[0] == 250
        assert await c.cmd("STARTTLS x") == (501, "5.5.4 Syntax: STARTTLS")
        assert await c.cmd("STARTTLS") == (220, "2.0.0 Ready to start TLS")
        await start_tls(c, certs.client_context())
        assert await c.cmd("RCPT TO:<b@example.com>") == (503, "5.5.1 Error: need MAIL command")
        keywords = await ehlo_keywords(c)
        assert "STARTTLS" not in keywords and "PIPELINING" in keywords
        assert await c.cmd("STARTTLS") == (554, "5.5.1 Error: TLS already active")


async def test_a_failed_handshake_ends_the_session_and_frees_its_connection_slot(
        listen: ListenerFactory, certs: CertFiles) -> None:
    async with listen(smtpd_connection_limit=1, trusted_networks=[]) as listener:
        c = await listener.client()
        assert await c.cmd("STARTTLS") == (220, "2.0.0 Ready to start TLS")
        await c.send(b"EHLO not a TLS record\r\n" * 4)
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
        c = await listener.client()  # the only slot is free again
        assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused_and_the_listener_goes_on(listen: ListenerFactory, certs: CertFiles) -> None:
    old = certs.client_context()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    async with listen() as listener:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", listener.smtps_port, ssl=old,
                                                           server_hostname="mx.test"), 5)
        refused, _offered = await asyncio.to_thread(smtplib_implicit_tls, listener.smtps_port,
                                                    certs.client_context())
        assert refused == {}


def test_the_server_context_has_a_tls_1_2_floor_and_no_compression(certs: CertFiles) -> None:
    context = server_context(str(certs.cert), str(certs.key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION


def peer_names(port: int, context: ssl.SSLContext) -> list[str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.starttls(context=context)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        cert = sock.getpeercert()
        assert cert is not None
        return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


async def test_reload_puts_a_renewed_certificate_in_force_and_keeps_the_old_one_when_the_new_is_broken(
        listen: ListenerFactory, certs: CertFiles) -> None:
    async with listen() as listener:
        tls = listener.listeners.tls
        assert tls is not None
        context = certs.client_context()
        context.check_hostname = False  # the renewed certificate names another host
        assert await asyncio.to_thread(peer_names, listener.port, context) == ["mx.test"]
        certs.issue("renewed.test", "127.0.0.1")
        assert tls.reload()
        assert await asyncio.to_thread(peer_names, listener.port, context) == ["renewed.test"]
        certs.key.write_text("not a key")
        assert not tls.reload()
        assert await asyncio.to_thread(peer_names, listener.port, context) == ["renewed.test"]


def test_a_certificate_without_its_key_or_that_cannot_be_read_is_a_config_error(certs: CertFiles,
                                                                                 tmp_path: Path) -> None:
    assert ServerTLS.load("", "") is None
    with pytest.raises(ConfigError, match="set both or neither"):
        ServerTLS.load(str(certs.cert), "")
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        ServerTLS.load(str(tmp_path / "missing.pem"), str(certs.key))


async def test_smtps_listen_without_a_certificate_is_a_config_error(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(smtps_listen=f"127.0.0.1:{free_port()}") as spooler:
        with pytest.raises(ConfigError, match="smtps_listen needs a certificate"):
            await start_smtp(spooler, spooler.settings)


def test_a_key_others_may_read_is_loaded_with_a_warning(certs: CertFiles, caplog: pytest.LogCaptureFixture) -> None:
    certs.key.chmod(0o600)
    assert ServerTLS.load(str(certs.cert), str(certs.key)) is not None
    assert "others may read" not in caplog.text
    certs.key.chmod(0o644)
    assert ServerTLS.load(str(certs.cert), str(certs.key)) is not None
    assert f"TLS key {certs.key} has mode 0644: others may read it; chmod 600 it" in caplog.text
