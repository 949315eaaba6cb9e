"""Outbound TLS and smarthost AUTH (RFC 3207, RFC 8314, RFC 4954) over real loopback sockets: the
spooler relays to the test sink speaking STARTTLS or implicit TLS with a certificate from a test CA
(trustme), and AUTH PLAIN/LOGIN; the sink records whether each message came over TLS and as whom."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from msgspool.errors import ConfigError
from msgspool.transports.smtp import SMTPTransport
from msgspool.transports.smtp_client import SMTPClient
from msgspool.transports.smtp_security import Credentials, SessionSecurity, TLSLevel, client_context
from tests.conftest import SpoolerFactory, make_settings
from tests.integration.test_relay import submission, wait_status
from tests.support.sink import Sink

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "relay-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def make_sink(ca: trustme.CA) -> Iterator[Any]:
    sinks: list[Sink] = []

    def make(*names: str, **options: Any) -> Sink:
        tls = server_context(ca, *(names or ("127.0.0.1",))) if names != ("clear",) else None
        sink = Sink(tls=tls, **options).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


async def relay_one(spooler_factory: SpoolerFactory, relay: str, wanted: set[str],
                    **settings: Any) -> dict[str, Any]:
    async with spooler_factory(relay=relay, **settings) as spooler:
        message_id = await spooler.submit(submission("b@example.com"))
        info = await wait_status(spooler, message_id, wanted)
    recipient: dict[str, Any] = info["recipients"][0]
    return recipient


# -- smtp_tls_security_level ----------------------------------------------------------------------


async def test_may_is_the_default_and_uses_starttls_then_says_ehlo_again(
        spooler_factory: SpoolerFactory, make_sink: Any, caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink("127.0.0.1")
    caplog.set_level(logging.INFO, logger="msgspool")
    r = await relay_one(spooler_factory, sink.address, {"delivered"})
    assert [m.tls for m in sink.messages] == ["TLSv1.3"]
    assert sink.verbs[:4] == ["EHLO", "STARTTLS", "TLS", "EHLO"]  # RFC 3207 §4.2: EHLO again
    assert r["relay"] == f"127.0.0.1[127.0.0.1]:{sink.port} tls=TLSv1.3"
    assert any("status=sent" in line and "tls=TLSv1.3" in line for line in caplog.messages)


async def test_may_sends_in_clear_to_a_server_without_starttls(spooler_factory: SpoolerFactory,
                                                               make_sink: Any) -> None:
    sink = make_sink("clear")
    r = await relay_one(spooler_factory, sink.address, {"delivered"})
    assert [m.tls for m in sink.messages] == [None]
    assert r["relay"] == f"127.0.0.1[127.0.0.1]:{sink.port}"
    assert "tls=" not in r["relay"]


async def test_may_retries_in_clear_at_once_after_a_failed_handshake(spooler_factory: SpoolerFactory,
                                                                     make_sink: Any) -> None:
    sink = make_sink("127.0.0.1", break_tls=True)
    r = await relay_one(spooler_factory, sink.address, {"delivered"})
    assert [m.tls for m in sink.messages] == [None]
    assert sink.connections == 2 and r["attempts"] == 1
    assert sink.verbs.count("STARTTLS") == 1  # the second connection does not try again


async def test_may_goes_on_in_clear_when_starttls_is_refused(spooler_factory: SpoolerFactory,
                                                             make_sink: Any) -> None:
    sink = make_sink("127.0.0.1", starttls_reply=b"454 4.7.0 TLS not available now\r\n")
    await relay_one(spooler_factory, sink.address, {"delivered"})
    assert [m.tls for m in sink.messages] == [None] and sink.connections == 1


async def test_none_never_sends_starttls(spooler_factory: SpoolerFactory, make_sink: Any) -> None:
    sink = make_sink("127.0.0.1")
    await relay_one(spooler_factory, sink.address, {"delivered"}, smtp_tls_security_level="none")
    assert [m.tls for m in sink.messages] == [None]
    assert "STARTTLS" not in sink.verbs


async def test_encrypt_refuses_a_server_without_starttls_and_sends_nothing(spooler_factory: SpoolerFactory,
                                                                          make_sink: Any) -> None:
    sink = make_sink("clear")
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, smtp_tls_security_level="encrypt")
    assert r["last_reply"].startswith("454 4.7.5 TLS is required (smtp_tls_security_level=encrypt) but 127.0.0.1")
    assert "does not offer STARTTLS" in r["last_reply"]
    assert sink.messages == [] and "MAIL" not in sink.verbs


async def test_encrypt_defers_when_starttls_is_refused(spooler_factory: SpoolerFactory, make_sink: Any) -> None:
    sink = make_sink("127.0.0.1", starttls_reply=b"454 4.7.0 TLS not available now\r\n")
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, smtp_tls_security_level="encrypt")
    assert r["last_reply"].startswith("454 4.7.5 ")
    assert "refused STARTTLS: 454 4.7.0 TLS not available now" in r["last_reply"]
    assert sink.messages == []


async def test_encrypt_defers_after_a_failed_handshake(spooler_factory: SpoolerFactory, make_sink: Any) -> None:
    sink = make_sink("127.0.0.1", break_tls=True)
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, smtp_tls_security_level="encrypt")
    assert r["last_reply"].startswith("454 4.7.5 TLS handshake with 127.0.0.1:")
    assert sink.messages == []


async def test_a_reply_injected_behind_the_starttls_reply_is_refused(spooler_factory: SpoolerFactory,
                                                                    make_sink: Any) -> None:
    # A man in the middle that answers in clear for the server-to-be: whatever follows the 220 was
    # not protected by TLS and must not be read as if it had been.
    sink = make_sink("127.0.0.1", starttls_reply=b"220 2.0.0 Ready\r\n250-AUTH PLAIN\r\n")
    r = await relay_one(spooler_factory, sink.address, {"deferred"})
    assert r["last_reply"].startswith("454 4.7.5 127.0.0.1[127.0.0.1]:")
    assert "sent data pipelined after its STARTTLS reply" in r["last_reply"]
    assert sink.messages == []


async def test_encrypt_does_not_check_the_certificate(spooler_factory: SpoolerFactory, make_sink: Any) -> None:
    sink = make_sink("wrong.test")
    await relay_one(spooler_factory, sink.address, {"delivered"}, smtp_tls_security_level="encrypt")
    assert [m.tls for m in sink.messages] == ["TLSv1.3"]


async def test_verify_delivers_to_a_certificate_from_the_ca_file_naming_the_host(
        spooler_factory: SpoolerFactory, make_sink: Any, ca_file: str) -> None:
    sink = make_sink("127.0.0.1")
    r = await relay_one(spooler_factory, sink.address, {"delivered"}, smtp_tls_security_level="verify",
                        smtp_tls_ca_file=ca_file)
    assert [m.tls for m in sink.messages] == ["TLSv1.3"]
    assert r["relay"].endswith(" tls=TLSv1.3")


async def test_verify_defers_a_certificate_for_another_name(spooler_factory: SpoolerFactory, make_sink: Any,
                                                            ca_file: str) -> None:
    sink = make_sink("wrong.test")
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, smtp_tls_security_level="verify",
                        smtp_tls_ca_file=ca_file)
    assert r["last_reply"].startswith(f"454 4.7.5 TLS handshake with 127.0.0.1:{sink.port} failed: ")
    assert "mismatch" in r["last_reply"] and "127.0.0.1" in r["last_reply"]
    assert sink.messages == [] and "MAIL" not in sink.verbs


async def test_verify_without_a_ca_file_trusts_only_the_system_store(spooler_factory: SpoolerFactory,
                                                                     make_sink: Any) -> None:
    sink = make_sink("127.0.0.1")  # a test CA no system trusts
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, smtp_tls_security_level="verify")
    assert r["last_reply"].startswith("454 4.7.5 TLS handshake")
    assert "unable to get local issuer certificate" in r["last_reply"]
    assert sink.messages == []


async def test_a_transport_table_overrides_the_level_and_ca_file(spooler_factory: SpoolerFactory,
                                                                 make_sink: Any, ca_file: str) -> None:
    sink = make_sink("127.0.0.1")
    override = {"name": "smtp", "type": "smtp", "relay": sink.address, "tls_security_level": "verify",
                "tls_ca_file": ca_file}
    async with spooler_factory(smtp_tls_security_level="none", transports=[override]) as spooler:
        transport = spooler.transports["smtp"]
        assert isinstance(transport, SMTPTransport) and transport.security.level is TLSLevel.VERIFY
        message_id = await spooler.submit(submission("b@example.com"))
        await wait_status(spooler, message_id, {"delivered"})
    assert [m.tls for m in sink.messages] == ["TLSv1.3"]


async def test_one_tls_session_carries_several_pipelined_transactions(make_sink: Any, ca_file: str,
                                                                     password_file: str) -> None:
    sink = make_sink("127.0.0.1", accounts={"app": PASSWORD})
    security = SessionSecurity(level=TLSLevel.VERIFY, context=client_context(TLSLevel.VERIFY, ca_file),
                               credentials=Credentials("app", password_file))
    client = await SMTPClient.connect("127.0.0.1", sink.port, helo_name="mx.test", security=security)
    try:
        # What the server said in clear is forgotten: AUTH is offered only inside TLS here.
        assert client.tls is not None and client.tls[0] == "TLSv1.3" and client.user == "app"
        assert {"PIPELINING", "AUTH"} <= set(client.extensions) and "STARTTLS" not in client.extensions
        for n in range(3):
            result = await client.send("a@example.org", [f"r{n}@example.com", f"s{n}@example.com"],
                                       b"Subject: x\r\n\r\nbody\r\n")
            assert [reply.code for reply in result.outcomes()] == [250, 250]
    finally:
        await client.quit()
    assert sink.connections == 1 and [(m.tls, m.user) for m in sink.messages] == [("TLSv1.3", "app")] * 3


def test_an_unknown_level_stops_the_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS security level 'secure' is none of none, may, encrypt, verify"):
        SMTPTransport("smtp", make_settings(tmp_path, smtp_tls_security_level="secure"), {})


# -- implicit TLS (port 465) ------------------------------------------------------------------------


async def test_implicit_tls_relay_is_encrypted_from_the_first_byte(spooler_factory: SpoolerFactory,
                                                                   make_sink: Any, ca_file: str) -> None:
    sink = make_sink("127.0.0.1", implicit_tls=True)
    r = await relay_one(spooler_factory, f"smtps://{sink.address}", {"delivered"},
                        smtp_tls_security_level="verify", smtp_tls_ca_file=ca_file)
    assert [m.tls for m in sink.messages] == ["TLSv1.3"]
    assert "STARTTLS" not in sink.verbs
    assert r["relay"] == f"127.0.0.1[127.0.0.1]:{sink.port} tls=TLSv1.3"


async def test_implicit_tls_never_falls_back_to_clear(spooler_factory: SpoolerFactory, make_sink: Any) -> None:
    sink = make_sink("clear")  # speaks plain SMTP on the port the client expects TLS on
    r = await relay_one(spooler_factory, f"smtps://{sink.address}", {"deferred"})
    assert r["last_reply"].startswith("454 4.7.5 TLS handshake with 127.0.0.1:")
    assert sink.messages == []


def test_smtps_relay_defaults_to_port_465_and_other_schemes_are_refused(tmp_path: Path) -> None:
    transport = SMTPTransport("smtp", make_settings(tmp_path, relay="smtps://smtp.example.org"), {})
    assert transport.security.implicit_tls and transport.port == 465 and transport.relay == "smtp.example.org"
    with pytest.raises(ConfigError, match="the only scheme is smtps://"):
        SMTPTransport("smtp", make_settings(tmp_path, relay="smtp://smtp.example.org:587"), {})


# -- smarthost AUTH ---------------------------------------------------------------------------------


async def test_auth_plain_after_starttls(spooler_factory: SpoolerFactory, make_sink: Any, password_file: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink = make_sink("127.0.0.1", accounts={"app": PASSWORD}, auth_mechanisms=("LOGIN", "PLAIN"))
    async with spooler_factory(relay=sink.address, relay_user="app", relay_password_file=password_file) as spooler:
        message_id = await spooler.submit(submission("b@example.com"))
        info = await wait_status(spooler, message_id, {"delivered"})
    assert [(m.tls, m.user) for m in sink.messages] == [("TLSv1.3", "app")]
    assert sink.verbs[:6] == ["EHLO", "STARTTLS", "TLS", "EHLO", "AUTH", "MAIL"]
    assert info["recipients"][0]["relay"] == f"127.0.0.1[127.0.0.1]:{sink.port} tls=TLSv1.3 user=app"
    assert PASSWORD not in caplog.text and PASSWORD not in json.dumps(info)


async def test_auth_login_when_only_login_is_offered(spooler_factory: SpoolerFactory, make_sink: Any,
                                                     password_file: str) -> None:
    sink = make_sink("127.0.0.1", accounts={"app": PASSWORD}, auth_mechanisms=("LOGIN",))
    await relay_one(spooler_factory, sink.address, {"delivered"}, relay_user="app",
                    relay_password_file=password_file)
    assert [(m.tls, m.user) for m in sink.messages] == [("TLSv1.3", "app")]


async def test_auth_over_implicit_tls(spooler_factory: SpoolerFactory, make_sink: Any, password_file: str) -> None:
    sink = make_sink("127.0.0.1", implicit_tls=True, accounts={"app": PASSWORD})
    await relay_one(spooler_factory, f"smtps://{sink.address}", {"delivered"}, relay_user="app",
                    relay_password_file=password_file)
    assert [(m.tls, m.user) for m in sink.messages] == [("TLSv1.3", "app")]


async def test_a_refused_password_defers_with_the_servers_reply(
        spooler_factory: SpoolerFactory, make_sink: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-42\n")
    sink = make_sink("127.0.0.1", accounts={"app": PASSWORD})
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, relay_user="app",
                        relay_password_file=str(wrong))
    assert r["last_reply"] == (f"454 4.7.8 authentication as app to 127.0.0.1[127.0.0.1]:{sink.port} failed:"
                               " 535 5.7.8 Authentication credentials invalid")
    assert sink.messages == [] and "MAIL" not in sink.verbs
    assert "not-the-password-42" not in caplog.text


async def test_a_refused_password_bounces_without_soft_bounce(spooler_factory: SpoolerFactory, make_sink: Any,
                                                              tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    sink = make_sink("127.0.0.1", accounts={"app": PASSWORD})
    r = await relay_one(spooler_factory, sink.address, {"failed"}, relay_user="app",
                        relay_password_file=str(wrong), smtp_auth_soft_bounce=False)
    assert r["last_reply"].startswith("535 5.7.8 authentication as app to 127.0.0.1")


async def test_no_auth_in_clear_even_when_the_server_offers_it(spooler_factory: SpoolerFactory, make_sink: Any,
                                                               password_file: str) -> None:
    sink = make_sink("clear", accounts={"app": PASSWORD}, auth_in_clear=True)
    r = await relay_one(spooler_factory, sink.address, {"deferred"}, relay_user="app",
                        relay_password_file=password_file, smtp_auth_without_tls=True)  # at `may`: not honoured
    assert r["last_reply"].startswith("454 4.7.0 not sending the password for app to 127.0.0.1")
    assert "AUTH" not in sink.verbs and sink.messages == []


async def test_auth_in_clear_only_at_level_none_with_the_explicit_setting(
        spooler_factory: SpoolerFactory, make_sink: Any, password_file: str) -> None:
    sink = make_sink("clear", accounts={"app": PASSWORD}, auth_in_clear=True)
    await relay_one(spooler_factory, sink.address, {"delivered"}, relay_user="app",
                    relay_password_file=password_file, smtp_tls_security_level="none", smtp_auth_without_tls=True)
    assert [(m.tls, m.user) for m in sink.messages] == [(None, "app")]


def test_credentials_pair_up_and_the_password_file_is_checked_only_on_request(tmp_path: Path,
                                                                               password_file: str) -> None:
    transport = SMTPTransport("smtp", make_settings(tmp_path, relay="relay.test:587", relay_user="app",
                                                    relay_password_file=password_file), {})
    transport.check()
    assert transport.security.credentials is not None
    assert PASSWORD not in repr(transport.security)
    with pytest.raises(ConfigError, match="a user and a password file go together"):
        SMTPTransport("smtp", make_settings(tmp_path, relay="relay.test:587", relay_user="app"), {})
    # `msgspool sendmail` builds the transports too, as a user who may not read the file: no error there.
    missing = SMTPTransport("smtp", make_settings(tmp_path, relay="relay.test:587", relay_user="app",
                                                  relay_password_file=str(tmp_path / "missing")), {})
    with pytest.raises(ConfigError, match=r"transport smtp: cannot use the password file of app: .*missing"):
        missing.check()  # what `serve` does at start
    with pytest.raises(ConfigError, match="are for a relay, and it has none"):
        SMTPTransport("smtp", make_settings(tmp_path, relay_user="app", relay_password_file=password_file), {})


async def test_the_password_file_is_read_for_each_connection(spooler_factory: SpoolerFactory, make_sink: Any,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "later"
    sink = make_sink("127.0.0.1", accounts={"app": PASSWORD})
    async with spooler_factory(relay=sink.address, relay_user="app", relay_password_file=str(path)) as spooler:
        message_id = await spooler.submit(submission("b@example.com"))
        info = await wait_status(spooler, message_id, {"deferred"})
        reply = info["recipients"][0]["last_reply"]
        assert reply.startswith("451 4.3.5 cannot authenticate as app: ") and str(path) in reply
        assert "AUTH" not in sink.verbs
        path.write_text(PASSWORD)  # the password arrives (or is rotated): no restart needed
        await spooler.flush()
        await wait_status(spooler, message_id, {"delivered"})
    assert [(m.tls, m.user) for m in sink.messages] == [("TLSv1.3", "app")]


def test_a_transport_with_its_own_relay_does_not_take_the_relay_account(tmp_path: Path,
                                                                        password_file: str) -> None:
    settings = make_settings(tmp_path, relay="relay.test:587", relay_user="app", relay_password_file=password_file)
    other = SMTPTransport("other", settings, {"relay": "other.test:25"})
    assert other.security.credentials is None
    own = SMTPTransport("own", settings, {"relay": "other.test:587", "user": "bob", "password_file": password_file})
    assert own.security.credentials is not None and own.security.credentials.user == "bob"
