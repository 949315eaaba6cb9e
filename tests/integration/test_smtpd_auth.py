"""SMTP AUTH (RFC 4954, PLAIN of RFC 4616, LOGIN) and the submission listener (RFC 6409) over
real loopback sockets, with a real SQLite spool, accounts as `msgspool user add` stores them and
a certificate from a test CA (trustme): smtplib and swaks as clients where a plain client is the
point, raw lines where the exact replies are."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import random
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from msgspool.daemon import SMTPListeners, start_smtp
from msgspool.domain.users import User, hash_password
from msgspool.spooler.runtime import Spooler, load_store
from tests.conftest import SpoolerFactory
from tests.integration.test_smtpd import MESSAGE, Client, ehlo_keywords
from tests.integration.test_smtpd_tls import CertFiles, ca, certs, start_tls  # noqa: F401 (fixtures)
from tests.support.sink import Sink, free_port

PASSWORD = "correct horse battery"
ALICE = "alice@example.org"


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class AuthListener:
    spooler: Spooler
    listeners: SMTPListeners
    port: int
    submission_port: int
    context: Any

    async def client(self, port: int | None = None, tls: bool = False) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port or self.port)
        client = Client(reader, writer)
        assert (await client.reply())[0] == 220
        if tls:
            assert (await client.cmd("EHLO client.test"))[0] == 250
            assert (await client.cmd("STARTTLS"))[0] == 220
            await start_tls(client, self.context)
        assert (await client.cmd("EHLO client.test"))[0] == 250
        return client

    async def add_user(self, name: str, password: str = PASSWORD, senders: tuple[str, ...] = (),
                       n: int = 2**15) -> None:
        """What `msgspool user add` stores (`n` lower: a cheaper hash, for the fuzzer), as it
        stores it: through a store of its own on the same spool (the CLI is another process)."""
        hashed = await asyncio.to_thread(hash_password, password, n=n)
        store = load_store(self.spooler.settings)
        await store.open(create=False)
        try:
            await store.add_user(User(name, senders, time.time()), hashed, replace=True)
        finally:
            await store.close()


ListenerFactory = Callable[..., AbstractAsyncContextManager[AuthListener]]


@pytest.fixture
def listen(spooler_factory: SpoolerFactory, sink: Sink, certs: CertFiles) -> ListenerFactory:  # noqa: F811
    @asynccontextmanager
    async def factory(**settings: Any) -> AsyncIterator[AuthListener]:
        port, submission_port = free_port(), free_port()
        settings = {"relay": sink.address, "smtp_listen": f"127.0.0.1:{port}",
                    "submission_listen": f"127.0.0.1:{submission_port}", "local_domains": ["example.org"],
                    "tls_cert_file": str(certs.cert), "tls_key_file": str(certs.key), "trusted_networks": [],
                    "smtpd_auth_failure_delay": 0.05, **settings}
        async with spooler_factory(**settings) as spooler:
            listeners = await start_smtp(spooler, spooler.settings)
            try:
                listener = AuthListener(spooler, listeners, port, submission_port, certs.client_context())
                await listener.add_user(ALICE)
                yield listener
            finally:
                listeners.close()

    return factory


def smtplib_submit(port: int, context: Any, user: str, password: str, sender: str,
                   recipients: list[str]) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")  # not in clear
        client.starttls(context=context)
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.login(user, password)
        return client.sendmail(sender, recipients, MESSAGE)


async def test_smtplib_logs_in_after_starttls_and_relays_with_esmtpsa_and_the_user_in_the_history(
        listen: ListenerFactory, sink: Sink) -> None:
    async with listen() as listener:
        refused = await asyncio.to_thread(smtplib_submit, listener.submission_port, listener.context,
                                          ALICE, PASSWORD, ALICE, ["bob@example.com"])
        assert refused == {}
        await sink.async_wait_for(1)
        (info,) = await listener.spooler.store.list_messages(["outbox", "sent"], None, 10)
        shown = await listener.spooler.message(info.id)
    assert sink.messages[0].recipients == ["bob@example.com"]
    assert b" with ESMTPSA (TLSv1." in sink.messages[0].content
    (entry,) = [h for h in shown["history"] if h["stage"] == "submission"]
    assert entry["outcome"] == "submitted" and ALICE in entry["detail"]


async def test_auth_login_on_the_plain_listener_lets_a_client_relay(listen: ListenerFactory, sink: Sink) -> None:
    async with listen() as listener:
        c = await listener.client(tls=True)
        assert await c.cmd("AUTH LOGIN") == (334, "VXNlcm5hbWU6")
        assert await c.cmd(b64("ALICE@example.org")) == (334, "UGFzc3dvcmQ6")  # names are case-insensitive
        assert await c.cmd(b64(PASSWORD)) == (235, "2.7.0 Authentication successful")
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[:1] == (503,)
        assert (await c.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 250
        assert (await c.cmd("RCPT TO:<bob@example.com>"))[0] == 250
        await c.close()


async def test_without_auth_an_untrusted_client_may_not_relay(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client(tls=True)
        assert (await c.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 250
        assert (await c.cmd("RCPT TO:<bob@example.com>"))[:1] == (554,)
        await c.close()


async def test_auth_before_tls_is_refused_with_538_and_not_offered(listen: ListenerFactory) -> None:
    async with listen() as listener:
        for port in (listener.port, listener.submission_port):
            c = await listener.client(port)
            keywords = await ehlo_keywords(c)
            assert "STARTTLS" in keywords and not [k for k in keywords if k.startswith("AUTH")]
            assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == (
                538, "5.7.11 Encryption required for requested authentication mechanism")
            await c.close()


async def test_bad_credentials_get_535_and_an_unknown_user_the_same(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client(listener.submission_port, tls=True)
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, "wrong")) == (535, "5.7.8 Error: authentication failed")
        assert (await c.cmd("AUTH PLAIN " + plain("nobody@example.org", PASSWORD)))[0] == 535
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD, authzid="root")))[0] == 535  # no proxy auth
        assert (await c.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 530
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD, authzid=ALICE)))[0] == 235
        await c.close()


async def test_star_cancels_and_bad_responses_are_501(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client(tls=True)
        assert await c.cmd("AUTH PLAIN") == (334, "")
        assert await c.cmd("*") == (501, "5.0.0 Authentication cancelled")
        assert await c.cmd("AUTH LOGIN") == (334, "VXNlcm5hbWU6")
        assert await c.cmd(b64(ALICE)) == (334, "UGFzc3dvcmQ6")
        assert (await c.cmd("*"))[:1] == (501,)
        assert (await c.cmd("AUTH PLAIN not!base64"))[1].startswith("5.5.2")
        assert (await c.cmd("AUTH PLAIN " + b64("no separators")))[1].startswith("5.5.2")
        assert (await c.cmd("AUTH CRAM-MD5"))[:1] == (504,)
        assert (await c.cmd("AUTH"))[:1] == (501,)
        assert await c.cmd("NOOP") == (250, "2.0.0 Ok")  # still in command mode
        await c.close()


async def test_pipelined_mail_after_auth_waits_for_the_auth_reply(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client(listener.submission_port, tls=True)
        await c.send(f"AUTH PLAIN {plain(ALICE, PASSWORD)}\r\nMAIL FROM:<{ALICE}>\r\n".encode())
        assert (await c.reply())[0] == 235
        assert (await c.reply())[0] == 250
        await c.close()


async def test_the_submission_listener_requires_auth_even_from_trusted_networks(
        listen: ListenerFactory) -> None:
    async with listen(trusted_networks=["127.0.0.0/8"]) as listener:
        c = await listener.client(listener.submission_port, tls=True)
        assert await c.cmd(f"MAIL FROM:<{ALICE}>") == (530, "5.7.0 Authentication required")
        await c.close()
        plain_listener = await listener.client(listener.port)  # the ordinary listener trusts loopback
        assert (await plain_listener.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 250
        await plain_listener.close()


async def test_an_authenticated_user_may_only_use_the_senders_it_owns(listen: ListenerFactory) -> None:
    async with listen() as listener:
        await listener.add_user("app", senders=("noreply@example.com",))
        c = await listener.client(listener.submission_port, tls=True)
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0] == 235
        assert await c.cmd("MAIL FROM:<ceo@example.com>") == (
            553, "5.7.1 <ceo@example.com>: Sender address rejected: not owned by user alice@example.org")
        assert (await c.cmd("MAIL FROM:<billing@example.org>"))[0] == 250  # its own domain
        assert (await c.cmd("RSET"))[0] == 250
        assert (await c.cmd("MAIL FROM:<>"))[0] == 250  # the null sender
        await c.close()
        c = await listener.client(listener.submission_port, tls=True)
        assert (await c.cmd("AUTH PLAIN " + plain("app", PASSWORD)))[0] == 235
        assert (await c.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 553
        assert (await c.cmd("MAIL FROM:<noreply@example.com>"))[0] == 250
        await c.close()


async def test_plaintext_auth_from_loopback_when_allowed_gives_esmtpa(listen: ListenerFactory, sink: Sink) -> None:
    async with listen(smtpd_auth_allow_plaintext_loopback=True) as listener:
        def submit() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", listener.submission_port, timeout=10) as client:
                client.ehlo("client.test")
                assert "PLAIN" in client.esmtp_features["auth"]
                client.login(ALICE, PASSWORD)
                return client.sendmail(ALICE, ["bob@example.com"], MESSAGE)

        assert await asyncio.to_thread(submit) == {}
        await sink.async_wait_for(1)
    assert b" with ESMTPA id " in sink.messages[0].content


async def test_failed_logins_slow_down_then_lock_the_client_out(listen: ListenerFactory) -> None:
    async with listen(smtpd_auth_failure_limit=4, smtpd_auth_failure_delay=0.2) as listener:
        c = await listener.client(listener.submission_port, tls=True)
        waited = []
        for _ in range(3):
            start = time.monotonic()
            assert (await c.cmd("AUTH PLAIN " + plain(ALICE, "guess")))[0] == 535
            waited.append(time.monotonic() - start)
        assert waited[0] >= 0.2 and waited[1] >= 0.4 and waited[2] >= 0.6
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, "guess")))[:1] == (421,)
        assert (await c.reply()) == (0, "connection closed")
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b"421 4.7.0 ") and b"failed logins" in greeting
        writer.close()


async def test_neither_the_password_nor_the_payload_is_logged(listen: ListenerFactory,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with listen() as listener:
        c = await listener.client(tls=True)
        wrong = plain(ALICE, "hunter2-wrong")
        assert (await c.cmd("AUTH PLAIN " + wrong))[0] == 535
        assert await c.cmd("AUTH LOGIN") == (334, "VXNlcm5hbWU6")
        assert (await c.cmd(b64(ALICE)))[0] == 334
        assert (await c.cmd(b64(PASSWORD)))[0] == 235
        await c.close()
    logged = caplog.text
    for secret in (PASSWORD, "hunter2-wrong", wrong, b64(PASSWORD)):
        assert secret not in logged
    assert "client=[127.0.0.1], sasl_method=LOGIN, sasl_username=alice@example.org" in logged
    assert "[127.0.0.1]: SASL PLAIN authentication failed" in logged


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
async def test_swaks_submits_with_starttls_and_auth(listen: ListenerFactory, sink: Sink, certs: CertFiles,  # noqa: F811
                                                    tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca_file))
    async with listen() as listener:
        for auth in ("PLAIN", "LOGIN"):
            result = await asyncio.to_thread(
                subprocess.run, ["swaks", "--server", f"127.0.0.1:{listener.submission_port}", "--tls",
                                 "--tls-ca-path", str(ca_file), "--tls-verify", "--tls-sni", "mx.test",
                                 "--auth", auth, "--auth-user", ALICE, "--auth-password", PASSWORD,
                                 "--from", ALICE, "--to", "bob@example.com", "--helo", "client.test"],
                capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "235 2.7.0" in result.stdout
        await sink.async_wait_for(2)
        bad = await asyncio.to_thread(
            subprocess.run, ["swaks", "--server", f"127.0.0.1:{listener.submission_port}", "--tls",
                             "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", "nope",
                             "--from", ALICE, "--to", "bob@example.com"], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "535 5.7.8" in bad.stdout


async def test_auth_is_offered_at_once_on_the_implicit_tls_listener(listen: ListenerFactory, sink: Sink) -> None:
    smtps_port = free_port()
    async with listen(smtps_listen=f"127.0.0.1:{smtps_port}") as listener:
        def submit() -> dict[str, Any]:
            with smtplib.SMTP_SSL("127.0.0.1", smtps_port, timeout=10, context=listener.context) as client:
                client.ehlo("client.test")
                assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
                client.login(ALICE, PASSWORD)
                return client.sendmail(ALICE, ["bob@example.com"], MESSAGE)

        assert await asyncio.to_thread(submit) == {}
        await sink.async_wait_for(1)
    assert b" with ESMTPSA (TLSv1." in sink.messages[0].content


async def test_starttls_forgets_an_authentication_made_in_clear(listen: ListenerFactory) -> None:
    async with listen(smtpd_auth_allow_plaintext_loopback=True) as listener:
        c = await listener.client(listener.submission_port)
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0] == 235
        assert (await c.cmd("STARTTLS"))[0] == 220
        await start_tls(c, listener.context)
        assert (await c.cmd("EHLO client.test"))[0] == 250
        assert (await c.cmd(f"MAIL FROM:<{ALICE}>"))[0] == 530  # RFC 3207 §4.2
        await c.close()


def fuzzed_exchange(rng: random.Random) -> bytes:
    """A few lines of AUTH gone wrong (and sometimes right): bad mechanisms, base64 and not,
    NULs in odd places, cancels, overlong responses, commands where a response is due. (No
    STARTTLS: the listener would wait for a handshake; other fuzzers cover it.)"""
    pieces = [b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH plain " + plain(ALICE, "x").encode(), b"AUTH CRAM-MD5", b"AUTH",
              b"AUTH PLAIN =", b"*", b"=", b"AUTH LOGIN " + b64(ALICE).encode(), b"MAIL FROM:<a@example.org>",
              b"RCPT TO:<b@example.com>", b"NOOP", b"RSET", b"EHLO x"]
    lines = []
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        if kind < 0.5:
            lines.append(rng.choice(pieces))
        elif kind < 0.7:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
            lines.append(base64.b64encode(raw) if rng.random() < 0.7 else raw.replace(b"\n", b""))
        elif kind < 0.8:
            lines.append(base64.b64encode(b"\0".join(rng.choice([b"", ALICE.encode(), b"\xff\xfe", b"a" * 300])
                                                     for _ in range(rng.randint(1, 4)))))
        elif kind < 0.9:
            lines.append(b"A" * rng.choice([100, 2100, 5000]))
        else:
            lines.append(b"AUTH PLAIN " + plain(ALICE, rng.choice(["x", PASSWORD, "\u00e9\u00e9"])).encode())
    return b"".join(line + rng.choice([b"\r\n", b"\n"]) for line in lines)


async def test_fuzzed_auth_exchanges_get_well_formed_replies_and_break_nothing(
        listen: ListenerFactory, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(4954)
    async with listen(smtpd_auth_allow_plaintext_loopback=True, smtpd_auth_failure_limit=0,
                      smtpd_auth_failure_delay=0.0) as listener:
        await listener.add_user(ALICE, n=2**8)
        seen: set[bytes] = set()
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.submission_port)
            # "*" first: it cancels an exchange left waiting for a response, else it is one more error.
            writer.write(b"EHLO fuzz.test\r\n" + fuzzed_exchange(rng) + b"*\r\nQUIT\r\n")
            replies = await asyncio.wait_for(reader.read(), 10)  # QUIT, or the error limit: it ends
            writer.close()
            for line in replies.split(b"\r\n")[:-1]:
                assert re.fullmatch(rb"[2-5][0-9][0-9]([ -].*)?", line), (line, replies)
                seen.add(line[:3])
            assert replies.endswith(b"\r\n")
        assert {b"334", b"235", b"535", b"501", b"504", b"503"} <= seen, seen
        await listener.add_user(ALICE)
        c = await listener.client(listener.submission_port, tls=True)
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0] == 235
        await c.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_mail_accepts_the_auth_parameter_of_rfc_4954(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client(listener.submission_port, tls=True)
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0] == 235
        assert (await c.cmd(f"MAIL FROM:<{ALICE}> AUTH=<>"))[0] == 250
        assert (await c.cmd("RSET"))[0] == 250
        assert (await c.cmd(f"MAIL FROM:<{ALICE}> AUTH=alice+40example.org"))[0] == 250
        assert (await c.cmd("RSET"))[0] == 250
        assert (await c.cmd(f"MAIL FROM:<{ALICE}> AUTH"))[:1] == (501,)
        await c.close()


async def auth_from(address: str, port: int, payload: str) -> tuple[float, int]:
    """One session from `address` (a loopback address) that tries AUTH PLAIN: (when answered, code)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    c = Client(reader, writer)
    try:
        assert (await c.reply())[0] == 220
        assert (await c.cmd("EHLO client.test"))[0] == 250
        code = (await c.cmd("AUTH PLAIN " + payload))[0]
        return time.monotonic(), code
    finally:
        writer.close()


async def test_parallel_guesses_from_one_address_are_taken_one_at_a_time_up_to_the_lockout(
        listen: ListenerFactory) -> None:
    async with listen(smtpd_auth_allow_plaintext_loopback=True, smtpd_auth_failure_limit=3,
                      smtpd_auth_failure_delay=0.1) as listener:
        results = await asyncio.gather(*(auth_from("127.0.0.2", listener.port, plain(ALICE, f"guess{i}"))
                                         for i in range(6)))
    codes = sorted(code for _when, code in results)
    assert codes == [421, 421, 421, 421, 535, 535]  # the third failure locks out the rest, unchecked


async def test_a_guessing_address_does_not_hold_up_a_login_from_another(listen: ListenerFactory) -> None:
    async with listen(smtpd_auth_allow_plaintext_loopback=True, smtpd_auth_failure_limit=0,
                      smtpd_auth_failure_delay=0.2) as listener:
        guesses = [asyncio.ensure_future(auth_from("127.0.0.2", listener.port, plain(ALICE, f"guess{i}")))
                   for i in range(4)]
        await asyncio.sleep(0.05)
        login_at, code = await auth_from("127.0.0.1", listener.port, plain(ALICE, PASSWORD))
        answered = sorted(when for when, _code in await asyncio.gather(*guesses))
    assert code == 235
    assert login_at < answered[2], "the login waited behind the guesses"


async def test_a_reload_changes_the_auth_settings_for_the_next_session(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client(listener.submission_port)
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0] == 538
        await c.close()
        settings = dataclasses.replace(listener.spooler.settings, smtpd_auth_allow_plaintext_loopback=True,
                                       local_domains=["example.org", "example.net"])
        listener.listeners.reconfigure(settings)
        await listener.add_user("bob")
        c = await listener.client(listener.submission_port)
        assert (await c.cmd("AUTH PLAIN " + plain("bob", PASSWORD)))[0] == 235
        assert (await c.cmd("MAIL FROM:<bob@example.net>"))[0] == 250  # bob@ each local domain, the new one too
        await c.close()
