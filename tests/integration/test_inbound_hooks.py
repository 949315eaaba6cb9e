"""Inbound hooks (MAPI spooler hooks) on local delivery, in-process with a real SQLite spool and a
real SMTP sink: Sieve filing, reject, vacation and redirect; DKIM verification recorded in
Authentication-Results; a failing hook holds only its recipient."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from msgspool.domain.vacation import vacation_reply
from msgspool.hooks import sieve_filter
from msgspool.hooks.dkim import DKIMKey, Signer, load_private_key, public_key_record
from msgspool.spooler.intake import Intake, Submission
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import wait_status
from tests.support import demo_hooks
from tests.support.dns import TXTServer
from tests.support.sink import Sink

SIEVE = [{"name": "filters", "type": "sieve"}]


def mail(subject: str, sender: str = "bob@example.com", to: str = "you@localhost", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}"
            f"@example.com>\r\n{extra}\r\nHello.\r\n").encode()


def script(spooler: Any, mailbox: str, text: str) -> None:
    folder = Path(spooler.settings.data_dir) / "sieve"
    folder.mkdir(exist_ok=True)
    (folder / f"{mailbox}.sieve").write_text(text)


async def submit(spooler: Any, content: bytes, to: str = "you@localhost", sender: str = "bob@example.com") -> str:
    return str(await spooler.submit(Submission(sender, [to], content)))


async def folder(spooler: Any, mailbox: str, name: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while True:
        found = await spooler.folder(mailbox, name)
        if len(found) >= count or time.monotonic() > end:
            return found
        await asyncio.sleep(0.02)


async def test_sieve_files_a_matching_message_into_a_folder_and_the_rest_into_the_inbox(
        spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(hooks=SIEVE) as spooler:
        script(spooler, "you@localhost", 'require ["fileinto", "imap4flags"];\r\n'
                                         'if header :contains "subject" "report" {\r\n'
                                         '  fileinto :flags "\\\\Flagged" "Reports";\r\n}\r\n')
        events = spooler.events(mailbox="you@localhost")
        report = await submit(spooler, mail("weekly report"))
        other = await submit(spooler, mail("lunch"))
        filed = await folder(spooler, "you@localhost", "Reports")
        inbox = await folder(spooler, "you@localhost", "inbox")
        # one new_mail each, in the order the copies were filed (either: seen on PostgreSQL)
        told = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
        info = await wait_status(spooler, report, {"delivered"})
        await wait_status(spooler, other, {"delivered"})
    assert [(m["sender"], m["flags"]) for m in filed] == [("bob@example.com", ["\\Flagged"])] and len(inbox) == 1
    assert sorted((e.type, e.folder, e.message_id) for e in told) == [
        ("new_mail", "Reports", filed[0]["id"]), ("new_mail", "inbox", inbox[0]["id"])]
    assert info["recipients"][0]["last_reply"] == "250 2.0.0 delivered to mailbox you@localhost (Reports)"
    assert info["history"][0]["hook"] == "filters"


async def test_sieve_reject_fails_the_recipient_and_the_sender_gets_an_ndr(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(hooks=SIEVE, relay=sink.address) as spooler:
        script(spooler, "you@localhost", 'require "reject";\r\nif header :contains "subject" "offer" '
                                         '{ reject "I do not want offers."; }\r\n')
        message_id = await submit(spooler, mail("a great offer"))
        info = await wait_status(spooler, message_id, {"failed"})
        await sink.async_wait_for(1)
        filed = await spooler.folder("you@localhost")
    assert info["recipients"][0]["last_reply"] == "550 5.7.1 I do not want offers."
    ndr = sink.messages[0]
    assert (ndr.sender, ndr.recipients) == ("", ["bob@example.com"])
    assert b"Action: failed" in ndr.content and b"I do not want offers." in ndr.content
    assert filed == []


async def test_sieve_vacation_answers_each_sender_once_per_period(spooler_factory: SpoolerFactory,
                                                                  sink: Sink) -> None:
    async with spooler_factory(hooks=SIEVE, relay=sink.address) as spooler:
        script(spooler, "you@localhost", 'require "vacation";\r\nvacation :days 1 "I am away until Monday.";\r\n')
        for subject, sender in (("one", "bob@example.com"), ("two", "bob@example.com"), ("three", "carol@example.net")):
            await wait_status(spooler, await submit(spooler, mail(subject, sender), sender=sender), {"delivered"})
        await sink.async_wait_for(2)
        await asyncio.sleep(0.3)  # nothing more comes
        inbox = await spooler.folder("you@localhost")
    assert sorted((m.sender, m.recipients[0]) for m in sink.messages) == [("", "bob@example.com"),
                                                                          ("", "carol@example.net")]
    reply = message_from_bytes(sink.messages[0].content)
    assert reply["Auto-Submitted"] == "auto-replied" and reply["In-Reply-To"] == "<one@example.com>"
    assert len(inbox) == 3  # vacation keeps the message too


async def test_sieve_redirect_forwards_with_the_original_sender_and_a_loop_is_stopped(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(hooks=SIEVE, relay=sink.address) as spooler:
        script(spooler, "you@localhost", 'redirect "away@example.org";\r\n')
        script(spooler, "ping@localhost", 'redirect "pong@localhost";\r\n')
        script(spooler, "pong@localhost", 'redirect "ping@localhost";\r\n')
        forwarded = await submit(spooler, mail("hi"))
        looped = await submit(spooler, mail("loop", to="ping@localhost"), to="ping@localhost")
        await wait_status(spooler, forwarded, {"delivered"})
        await sink.async_wait_for(1)
        await wait_status(spooler, looped, {"delivered"})
        await asyncio.sleep(0.5)
        ping, you = await spooler.folder("ping@localhost"), await spooler.folder("you@localhost")
    got = [m for m in sink.messages if m.recipients == ["away@example.org"]]
    assert got and got[0].sender == "bob@example.com" and got[0].content.startswith(b"Delivered-To: you@localhost")
    assert you == [] and ping == []
    ndrs = [m for m in sink.messages if m.sender == "" and b"mail forwarding loop" in m.content]
    assert len(ndrs) == 1  # ping -> pong -> ping: the second visit to ping fails, its sender hears of it


async def test_a_script_that_does_not_compile_keeps_the_mail_in_the_inbox(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(hooks=SIEVE) as spooler:
        script(spooler, "you@localhost", 'if header :contains "subject" {\r\n')
        await wait_status(spooler, await submit(spooler, mail("x")), {"delivered"})
        assert len(await spooler.folder("you@localhost")) == 1


async def test_an_inbound_hook_that_raises_holds_only_its_recipient_until_released(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(hooks=[{"name": "boom", "type": "boom_in"}], relay=sink.address) as spooler:
        message_id = await spooler.submit(Submission("bob@example.com", ["you@localhost", "c@example.com"],
                                                     mail("boom")))
        info = await wait_status(spooler, message_id, {"held", "delivered"})
        statuses = {r["address"]: r["status"] for r in info["recipients"]}
        assert statuses == {"you@localhost": "held", "c@example.com": "delivered"}
        assert "RuntimeError: the hook is broken" in info["history"][-1]["detail"]
        demo_hooks.STATE["broken"] = False
        await spooler.release([message_id])
        await wait_status(spooler, message_id, {"delivered"})
        assert len(await spooler.folder("you@localhost")) == 1


@pytest.mark.parametrize(("hook", "subject", "error"), [
    ("exits_in", "exit", "SystemExit: 3"),
    ("reply_in", "bad-reply", "an AutoReply's content must be bytes, not str"),
])
async def test_an_inbound_hook_that_exits_or_answers_malformed_actions_holds_its_recipient(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None, hook: str, subject: str,
        error: str) -> None:
    async with spooler_factory(hooks=[{"name": hook, "type": hook}], relay=sink.address) as spooler:
        bad = await submit(spooler, mail(subject))
        good = await submit(spooler, mail("fine"))
        await wait_status(spooler, good, {"delivered"})
        info = await wait_status(spooler, bad, {"held"})
        inbox = await spooler.folder("you@localhost")
    assert (info["history"][-1]["hook"], info["history"][-1]["outcome"]) == (hook, "error")
    assert error in info["history"][-1]["detail"] and error in info["recipients"][0]["last_reply"]
    assert len(inbox) == 1  # the other message only


async def test_an_inbound_answer_that_cannot_be_carried_out_holds_the_recipient_with_the_error(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None, monkeypatch: pytest.MonkeyPatch) -> None:
    build = Intake.build

    def failing_build(self: Intake, sub: Submission, *args: Any, **kwargs: Any) -> Any:
        if sub.origin == "auto-reply":  # something judge_inbound could not foresee
            raise OSError("no space left for the reply")
        return build(self, sub, *args, **kwargs)

    monkeypatch.setattr(Intake, "build", failing_build)
    async with spooler_factory(hooks=[{"name": "replies", "type": "reply_in"}], relay=sink.address) as spooler:
        message_id = await submit(spooler, mail("hello"))
        info = await wait_status(spooler, message_id, {"held"})
        inbox = await spooler.folder("you@localhost")
    assert info["history"][-1]["hook"] == "replies" and info["history"][-1]["outcome"] == "error"
    assert "OSError: no space left for the reply" in info["history"][-1]["detail"]
    assert info["recipients"][0]["last_reply"].startswith("451 4.3.0 inbound hook replies failed: ")
    assert inbox == [] and sink.messages == []


@pytest.fixture
def signing(tmp_path: Path) -> tuple[Signer, str]:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = tmp_path / "example.com.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    key = DKIMKey("example.com", "sel", str(path), algorithm="ed25519-sha256")
    return Signer([key]), public_key_record(load_private_key(str(path), key.algorithm), key.algorithm)


async def test_dkim_verify_records_the_outcome_and_drops_a_forged_result(
        spooler_factory: SpoolerFactory, signing: tuple[Signer, str]) -> None:
    signer, record = signing
    forged = "Authentication-Results: mx.test; dkim=pass header.d=bank.example\r\n"
    signed = signer.sign(mail("signed", extra=forged), "bob@example.com")
    assert signed is not None
    with TXTServer({"sel._domainkey.example.com": record}) as dns:
        hooks = [{"name": "dkim-in", "type": "dkim_verify", "nameserver": dns.address}]
        async with spooler_factory(hooks=hooks) as spooler:
            good = await submit(spooler, signed)
            bad = await submit(spooler, signed.replace(b"Hello.", b"Hullo."))
            await wait_status(spooler, good, {"delivered"})
            history = (await wait_status(spooler, bad, {"delivered"}))["history"]
            copies = [await spooler.content(m["id"]) for m in await spooler.folder("you@localhost")]
    assert [(h["hook"], h["outcome"]) for h in history] == [("dkim-in", "changed")]
    assert history[0]["detail"] == "<you@localhost> added Authentication-Results; content"  # the forged one removed
    copies.sort(key=lambda c: b"Hullo." in c)  # the intact one first: the two are filed in either order
    results = [message_from_bytes(c).get_all("Authentication-Results") for c in copies]
    assert [r[0].split(";")[1].split()[0] for r in results] == ["dkim=pass", "dkim=fail"]
    assert all(len(r) == 1 for r in results)  # the forged one is gone (RFC 8601 §5)
    assert "header.d=example.com" in results[0][0]


async def test_sieve_vacation_answers_two_concurrent_messages_from_one_sender_once(
        spooler_factory: SpoolerFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each message's hooks run in a task of its own, on several hook threads. The gate holds the
    # first reply decision until a second one comes (or 0.5 s pass), so two decisions that could
    # overlap do: both would see "never answered" unless check and record are one step.
    gate = threading.Barrier(2)

    def gated_reply(*args: Any, **kwargs: Any) -> bytes | None:
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait(timeout=0.5)
        return vacation_reply(*args, **kwargs)

    monkeypatch.setattr(sieve_filter, "vacation_reply", gated_reply)
    async with spooler_factory(hooks=SIEVE, relay=sink.address) as spooler:
        script(spooler, "you@localhost", 'require "vacation";\r\nvacation :days 1 "I am away until Monday.";\r\n')
        sent = await asyncio.gather(submit(spooler, mail("one")), submit(spooler, mail("two")))
        for message_id in sent:
            await wait_status(spooler, message_id, {"delivered"})
        await sink.async_wait_for(1)
        await asyncio.sleep(0.3)  # a second reply would be on its way by now
        inbox = await spooler.folder("you@localhost")
    assert [(m.sender, m.recipients) for m in sink.messages] == [("", ["bob@example.com"])]
    assert len(inbox) == 2


async def test_sieve_sees_the_authentication_results_dkim_verify_added_before_it(
        spooler_factory: SpoolerFactory, signing: tuple[Signer, str]) -> None:
    signer, record = signing
    signed = signer.sign(mail("signed"), "bob@example.com")
    assert signed is not None
    with TXTServer({"sel._domainkey.example.com": record}) as dns:
        hooks = [{"name": "dkim-in", "type": "dkim_verify", "nameserver": dns.address}, *SIEVE]
        async with spooler_factory(hooks=hooks) as spooler:
            script(spooler, "you@localhost", 'require "fileinto";\r\nif header :contains "authentication-results" '
                                             '"dkim=fail" { fileinto "Suspect"; }\r\n')
            good = await submit(spooler, signed)
            bad = await submit(spooler, signed.replace(b"Hello.", b"Hullo."))
            for message_id in (good, bad):
                await wait_status(spooler, message_id, {"delivered"})
            suspect, inbox = await spooler.folder("you@localhost", "Suspect"), await spooler.folder("you@localhost")
            contents = [await spooler.content(m["id"]) for m in (*suspect, *inbox)]
    assert (len(suspect), len(inbox)) == (1, 1)
    assert b"Hullo." in contents[0] and b"dkim=fail" in contents[0] and b"dkim=pass" in contents[1]
    assert all(c.count(b"Authentication-Results:") == 1 for c in contents)  # the view added nothing to the copy
