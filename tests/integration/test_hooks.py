"""Outbound hooks (MAPI preprocessors), in-process with a real SQLite spool and a real SMTP sink:
built-in ones, third-party ones found by entry point, and poison isolation."""

from __future__ import annotations

import asyncio
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from msgspool.errors import ConfigError
from msgspool.hooks.dkim import load_private_key, public_key_record
from msgspool.spooler.intake import Submission
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import submission, wait_status
from tests.support import demo_hooks
from tests.support.sink import Sink
from tests.unit.test_dkim import Zone, rsa_pem_of, zone_for


def mail(subject: str, to: str = "b@example.com", sender: str = "a@example.org") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def hooks(*types: str, **options: Any) -> list[dict[str, Any]]:
    return [{"name": t, "type": t, **options} for t in types]


async def test_rewrite_maps_envelope_and_header_addresses(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    rewrite = {"name": "canonical", "type": "rewrite", "sender": {"@example.org": "@new.example"},
               "recipient": {"b@example.com": "bob@example.net"}}
    async with spooler_factory(relay=sink.address, hooks=[rewrite]) as spooler:
        message_id = await spooler.submit(submission("b@example.com", content=mail("hi")))
        info = await wait_status(spooler, message_id, {"delivered"})
    got = sink.messages[0]
    assert (got.sender, got.recipients) == ("a@new.example", ["bob@example.net"])
    headers = message_from_bytes(got.content)
    assert (headers["From"], headers["To"]) == ("a@new.example", "bob@example.net")
    assert info["recipients"][0]["address"] == "bob@example.net"
    assert [(h["hook"], h["outcome"]) for h in info["history"]] == [("canonical", "changed")]


async def test_header_checks_reject_fails_the_message_and_the_local_sender_gets_an_ndr(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    checks = {"name": "checks", "type": "header_checks",
              "rules": [{"pattern": r"^Subject:.*\bviagra\b", "flags": "i", "text": "no spam here"}]}
    async with spooler_factory(relay=sink.address, hooks=[checks]) as spooler:
        bad = await spooler.submit(Submission("me@localhost", ["b@example.com"], mail("Cheap VIAGRA")))
        good = await spooler.submit(submission("b@example.com", content=mail("lunch")))
        info = await wait_status(spooler, bad, {"failed"})
        await wait_status(spooler, good, {"delivered"})
        inbox = await _wait_folder(spooler, "me@localhost")
    assert info["recipients"][0]["last_reply"] == "550 5.7.1 no spam here"
    assert [m.recipients for m in sink.messages] == [["b@example.com"]]
    assert inbox[0]["message_class"] == "REPORT.IPM.Note.NDR"


async def test_complete_headers_adds_message_id_and_date(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("complete_headers")) as spooler:
        await wait_status(spooler, await spooler.submit(submission("b@example.com", content=mail("x"))), {"delivered"})
    headers = message_from_bytes(sink.messages[0].content)
    assert headers["Message-ID"].endswith("@mx.test>") and headers["Date"]


async def test_every_hook_that_ran_is_in_the_history_also_when_it_changed_nothing(spooler_factory: SpoolerFactory,
                                                                                  sink: Sink) -> None:
    complete = b"Message-ID: <m1@example.org>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n" + mail("y")
    async with spooler_factory(relay=sink.address, hooks=hooks("complete_headers")) as spooler:
        ids = [await spooler.submit(submission("b@example.com", content=c)) for c in (mail("x"), complete)]
        added, passed = [await wait_status(spooler, i, {"delivered"}) for i in ids]
    assert [(h["hook"], h["outcome"]) for h in added["history"]] == [("complete_headers", "changed")]
    assert [(h["hook"], h["outcome"]) for h in passed["history"]] == [("complete_headers", "unchanged")]


async def test_a_hook_that_raises_holds_only_its_message_until_released(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("boom")) as spooler:
        bad = await spooler.submit(submission("b@example.com", content=mail("boom")))
        good = await spooler.submit(submission("c@example.com", content=mail("fine")))
        await wait_status(spooler, good, {"delivered"})
        held = await wait_status(spooler, bad, {"held"})
        assert held["held"] is True
        assert held["history"][-1]["outcome"] == "error"
        assert "RuntimeError: the hook is broken" in held["history"][-1]["detail"]
        demo_hooks.STATE["broken"] = False  # the hook is fixed
        await spooler.release([bad])
        await wait_status(spooler, bad, {"delivered"})
    assert sorted(r for m in sink.messages for r in m.recipients) == ["b@example.com", "c@example.com"]


@pytest.mark.parametrize(("hook", "subject", "error"), [
    ("slow", "slow", "no answer within 0.3 s"),
    ("garbage", "garbage", "answered int"),
    ("malformed", "no-addrtype", "bad address type None"),
    ("malformed", "crlf-sender", "bad sender address 'a@example.org>\\r\\nRCPT TO:<victim@example.net'"),
    ("exits", "exit", "SystemExit: 3"),
    ("async_exits", "exit", "SystemExit: 3"),
])
async def test_a_hook_that_hangs_exits_or_answers_garbage_holds_its_message(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None, hook: str, subject: str,
        error: str) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks(hook, timeout=0.3)) as spooler:
        bad = await spooler.submit(submission("b@example.com", content=mail(subject)))
        good = await spooler.submit(submission("c@example.com", content=mail("fine")))
        await wait_status(spooler, good, {"delivered"})
        held = await wait_status(spooler, bad, {"held"})
    assert held["held"] is True and held["history"][-1]["outcome"] == "error"
    assert error in held["history"][-1]["detail"]
    assert sink.recipients() == ["c@example.com"]


async def test_a_hook_that_edits_its_draft_in_place_and_answers_none_sends_its_edits(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("in_place")) as spooler:
        message_id = await spooler.submit(submission("b@example.com", content=mail("rename")))
        info = await wait_status(spooler, message_id, {"delivered"})
    got = sink.messages[0]
    assert got.recipients == ["renamed@example.net"] and got.content.startswith(b"X-Edited: in place\r\n")
    assert info["recipients"][0]["address"] == "renamed@example.net"
    assert [(h["hook"], h["outcome"], h["detail"]) for h in info["history"]] == [
        ("in_place", "changed", "recipients, content")]


async def test_plain_hooks_that_hang_their_threads_do_not_stall_other_mail(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("block", timeout=0.3)) as spooler:
        blocked = [await spooler.submit(submission(f"b{i}@example.com", content=mail("block"))) for i in range(6)]
        await asyncio.sleep(0.5)  # more hung calls than hook threads (4)
        started = time.monotonic()
        good = await spooler.submit(submission("c@example.com", content=mail("fine")))
        await wait_status(spooler, good, {"delivered"})
        elapsed = time.monotonic() - started
        held = [await wait_status(spooler, m, {"held"}) for m in blocked]
    assert elapsed < 2.0  # not behind the blocked threads (3 s each)
    assert all("no answer within 0.3 s" in h["history"][-1]["detail"] for h in held)


async def test_a_hook_may_split_a_message_into_one_per_recipient(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("split")) as spooler:
        message_id = await spooler.submit(submission("b@example.com", "c@example.com", content=mail("x")))
        await sink.async_wait_for(2)
        info = await spooler.message(message_id)
    parts = sorted((m.recipients[0], m.content.split(b"\r\n", 1)[0]) for m in sink.messages)
    assert parts == [("b@example.com", b"X-Part: 0"), ("c@example.com", b"X-Part: 1")]
    assert [r["address"] for r in info["recipients"]] == ["b@example.com"]
    assert info["history"][0]["outcome"] == "split"


async def test_a_hook_may_add_a_recipient(spooler_factory: SpoolerFactory, sink: Sink,
                                          demo_distribution: None) -> None:
    archive = {"name": "archive", "type": "archive", "address": "archive@example.net"}
    async with spooler_factory(relay=sink.address, hooks=[archive]) as spooler:
        message_id = await spooler.submit(submission("b@example.com", content=mail("x")))
        info = await wait_status(spooler, message_id, {"delivered"})
    assert [r["address"] for r in info["recipients"]] == ["b@example.com", "archive@example.net"]
    assert sink.recipients() == ["b@example.com", "archive@example.net"]


async def test_a_hook_runs_only_on_mail_in_its_scope_declared_by_it_or_the_configuration(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("tagger")) as spooler:  # its own: tagged.example
        for to in ("b@example.com", "c@tagged.example"):
            await wait_status(spooler, await spooler.submit(submission(to, content=mail("x", to=to))), {"delivered"})
    async with spooler_factory(relay=sink.address, hooks=hooks("tagger", addrtypes=["HTTP"])) as spooler:
        to = "d@tagged.example"  # the configuration narrows it to HTTP recipients
        await wait_status(spooler, await spooler.submit(submission(to, content=mail("x", to=to))), {"delivered"})
    tagged = {m.recipients[0]: m.content.startswith(b"X-Tagged: yes") for m in sink.messages}
    assert tagged == {"b@example.com": False, "c@tagged.example": True, "d@tagged.example": False}


async def test_requeue_applies_a_changed_rewrite_rule(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    def rule(target: str) -> list[dict[str, Any]]:
        return [{"name": "canonical", "type": "rewrite", "recipient": {"fail4xx@example.com": target}}]

    async with spooler_factory(relay=sink.address, hooks=rule("fail4xx-still@example.com")) as spooler:
        message_id = await spooler.submit(submission("fail4xx@example.com", content=mail("x")))
        await wait_status(spooler, message_id, {"deferred"})
    async with spooler_factory(relay=sink.address, hooks=rule("fixed@example.com")) as spooler:
        assert await spooler.requeue([message_id]) == [message_id]
        info = await wait_status(spooler, message_id, {"delivered"})
    assert sink.recipients()[-1] == "fixed@example.com"
    assert info["recipients"][0]["address"] == "fixed@example.com"
    assert [h["outcome"] for h in info["history"]] == ["changed", "requeued", "changed"]


SIX = [f"r{i}@example.com" for i in range(6)]  # more than a claim of active_limit 4 takes (2)


def reject_all() -> list[dict[str, Any]]:
    return [{"name": "checks", "type": "header_checks", "rules": [{"pattern": "^Subject: spam", "text": "no"}]}]


async def test_a_reject_fails_every_recipient_of_a_message_claimed_in_parts(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, hooks=reject_all(), active_limit=4) as spooler:
        message_id = await spooler.submit(submission(*SIX, content=mail("spam")))
        info = await wait_status(spooler, message_id, {"failed", "delivered"})
    assert [r["status"] for r in info["recipients"]] == ["failed"] * 6
    assert [m.recipients for m in sink.messages if m.sender] == []  # only the NDR (null sender) went out


async def test_a_split_covers_every_recipient_of_a_message_claimed_in_parts(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("split"), active_limit=4) as spooler:
        await spooler.submit(submission(*SIX, content=mail("x")))
        await sink.async_wait_for(6)
    assert sorted(m.recipients[0] for m in sink.messages) == SIX
    assert all(len(m.recipients) == 1 and m.content.startswith(b"X-Part: ") for m in sink.messages)


async def test_hooks_rewrite_every_recipient_of_mail_submitted_unrouted_and_claimed_in_parts(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    """sendmail's path: the submitter queues the recipients unrouted, the daemon claims them."""
    rewrite = [{"name": "canonical", "type": "rewrite", "headers": False,
                "recipient": {"r5@example.com": "z@example.net"}}]
    async with spooler_factory(deliver=False) as submitter:
        message_id = await submitter.submit(submission(*SIX, content=mail("x")))
    async with spooler_factory(relay=sink.address, hooks=rewrite, active_limit=4) as spooler:
        info = await wait_status(spooler, message_id, {"delivered"})
    assert sorted(sink.recipients()) == [*SIX[:5], "z@example.net"]
    assert [h["outcome"] for h in info["history"]] == ["changed"]


def hold_on_subject(subject: str) -> dict[str, Any]:
    return {"name": "checks", "type": "header_checks",
            "rules": [{"pattern": f"^Subject: {subject}", "action": "hold", "text": "look at it"}]}


async def test_a_message_held_by_a_hook_is_released_as_the_hooks_left_it_without_running_them_again(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    """Postfix header_checks HOLD, then postsuper -H: the hooks after the holding one did their
    part (here complete_headers adds a Message-ID), and release sends the message as it is."""
    rewrite = {"name": "canonical", "type": "rewrite", "recipient": {"b@example.com": "bob@example.net"}}
    pipeline = [rewrite, hold_on_subject("check me"), *hooks("complete_headers")]
    async with spooler_factory(relay=sink.address, hooks=pipeline) as spooler:
        message_id = await spooler.submit(submission("b@example.com", content=mail("check me")))
        held = await wait_status(spooler, message_id, {"held"})
        await spooler.release([message_id])
        info = await wait_status(spooler, message_id, {"delivered"})
    assert held["held"] is True
    assert sink.recipients() == ["bob@example.net"]
    assert message_from_bytes(sink.messages[0].content)["Message-ID"]
    assert [(h["hook"], h["outcome"]) for h in info["history"]] == [
        ("canonical", "changed"), ("checks", "held"), ("complete_headers", "changed")]


async def test_requeue_runs_the_hooks_again_on_a_message_a_hook_held(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, hooks=[hold_on_subject("check me")]) as spooler:
        message_id = await spooler.submit(submission("b@example.com", content=mail("check me")))
        await wait_status(spooler, message_id, {"held"})
        await spooler.requeue([message_id])
        await asyncio.sleep(0.3)
        info = await wait_status(spooler, message_id, {"held"})
    assert [h["outcome"] for h in info["history"]] == ["held", "requeued", "held"]
    assert sink.recipients() == []


async def test_release_runs_the_hooks_again_on_a_message_held_by_a_failing_hook(
        spooler_factory: SpoolerFactory, sink: Sink, demo_distribution: None) -> None:
    async with spooler_factory(relay=sink.address, hooks=hooks("boom")) as spooler:
        message_id = await spooler.submit(submission("b@example.com", content=mail("boom")))
        await wait_status(spooler, message_id, {"held"})
        await spooler.release([message_id])  # the hook is still broken: it fails again
        await asyncio.sleep(0.3)
        info = await wait_status(spooler, message_id, {"held"})
    assert [h["outcome"] for h in info["history"]] == ["error", "error"]
    assert sink.recipients() == []


async def test_a_message_that_keeps_crashing_its_transport_is_held(
        spooler_factory: SpoolerFactory, demo_distribution: None) -> None:
    transports = [{"name": "crash", "type": "crash"}]
    async with spooler_factory(transports=transports, crash_limit=3, min_backoff=0.05, max_backoff=0.1) as spooler:
        message_id = await spooler.submit(submission("x", addrtypes=["CRASH"]))
        info = await wait_status(spooler, message_id, {"held"})
    assert demo_hooks.STATE["crashes"] == 3
    assert info["recipients"][0]["last_reply"].startswith("451 4.3.0 transport crash raised ValueError")
    assert info["history"][-1]["detail"] == "crashed its transport 3 times"


async def test_an_unknown_hook_type_is_a_configuration_error(spooler_factory: SpoolerFactory) -> None:
    from msgspool.config import ConfigError

    with pytest.raises(ConfigError, match="unknown type 'nosuch'"):
        async with spooler_factory(hooks=hooks("nosuch")):
            pass


DKIM_KEYS = [{"domain": "example.org", "selector": "sel", "key_file": "dkim/example.org.key"},
             {"domain": "example.org", "selector": "ed", "key_file": "dkim/example.org.ed",
              "algorithm": "ed25519-sha256"}]


def dkim_keys(spool_dir: Path, mode: int = 0o600) -> Zone | None:
    """RSA and ed25519 keys in the spool's dkim/ directory; the DNS function serving their records
    (None when the files are not private: they cannot be loaded)."""
    (spool_dir / "dkim").mkdir(parents=True)
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for name, pem in (("example.org.key", rsa_pem_of(2048)), ("example.org.ed", ed)):
        (spool_dir / "dkim" / name).write_bytes(pem)
        (spool_dir / "dkim" / name).chmod(mode)
    if mode & 0o077:
        return None
    return zone_for({f"{k['selector']}._domainkey.example.org": public_key_record(
        load_private_key(spool_dir / str(k["key_file"]), str(k.get("algorithm", "rsa-sha256"))),
        str(k.get("algorithm", "rsa-sha256"))) for k in DKIM_KEYS})


async def test_dkim_sign_a_relayed_message_arrives_signed_and_verifies_with_dkimpy(
        spooler_factory: SpoolerFactory, sink: Sink, tmp_path: Path) -> None:
    zone = dkim_keys(tmp_path / "spool")
    signing = [{"name": "dkim", "type": "dkim_sign", "keys": DKIM_KEYS}]
    async with spooler_factory(relay=sink.address, hooks=hooks("complete_headers") + signing) as spooler:
        signed = await spooler.submit(submission("b@example.com", content=mail("signed")))
        unsigned = await spooler.submit(submission("c@example.com", content=mail("other", sender="a@other.example")))
        info = await wait_status(spooler, signed, {"delivered"})
        await wait_status(spooler, unsigned, {"delivered"})
    got = {m.recipients[0]: m.content for m in sink.messages}
    assert got["b@example.com"].count(b"DKIM-Signature:") == 2
    assert dkim.verify(got["b@example.com"], dnsfunc=zone)  # the rsa-sha256 signature, on top
    assert dkim.DKIM(got["b@example.com"]).verify(idx=1, dnsfunc=zone)  # the ed25519-sha256 one
    assert b"DKIM-Signature:" not in got["c@example.com"]
    assert [(h["hook"], h["detail"]) for h in info["history"]] == [("complete_headers", "content"),
                                                                   ("dkim", "content")]


async def test_dkim_sign_with_a_key_file_others_may_read_refuses_to_start(
        spooler_factory: SpoolerFactory, tmp_path: Path) -> None:
    dkim_keys(tmp_path / "spool", mode=0o644)
    key = tmp_path / "spool" / "dkim" / "example.org.key"
    with pytest.raises(ConfigError, match=f"DKIM key {key} has mode 0644.*chmod 600 {key}"):
        async with spooler_factory(hooks=[{"name": "dkim", "type": "dkim_sign", "keys": DKIM_KEYS}]):
            pass


async def test_a_submitter_that_does_not_route_never_reads_the_hooks_keys(
        spooler_factory: SpoolerFactory, tmp_path: Path) -> None:
    dkim_keys(tmp_path / "spool", mode=0o644)  # the daemon would refuse it; sendmail need not read it
    async with spooler_factory(deliver=False, hooks=[{"name": "dkim", "type": "dkim_sign", "keys": DKIM_KEYS}]) as sp:
        message_id = await sp.submit(submission("b@example.com", content=mail("x")))
        assert (await sp.message(message_id))["recipients"][0]["status"] == "queued"


async def _wait_folder(spooler: Any, mailbox: str) -> list[dict[str, Any]]:
    import asyncio

    for _ in range(200):
        found = await spooler.folder(mailbox)
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing filed for {mailbox}")


async def test_a_resend_sends_the_content_as_submitted_through_the_hooks_once_more(
        spooler_factory: SpoolerFactory, demo_distribution: None) -> None:
    """`queue resend` (issue 12.7): the resend starts from what was submitted, not from what the
    hooks made of it, so a hook's edit is in the resent message once, not twice."""
    down = Sink()  # not started: the first message expires waiting for it
    async with spooler_factory(relay=down.address, hooks=hooks("in_place"), max_lifetime=2) as spooler:
        original = await spooler.submit(submission("b@example.com", content=mail("again")))
        await wait_status(spooler, original, {"expired"}, timeout=8.0)
        assert (await spooler.content(original)).count(b"X-Edited: in place") == 1
        down.start()
        try:
            resent = await spooler.resend(original)
            info = await wait_status(spooler, resent["id"], {"delivered"})
            [got] = [m for m in down.messages if m.recipients == ["b@example.com"]]
        finally:
            down.stop()
    assert got.content.count(b"X-Edited: in place") == 1 and b"Subject: again" in got.content
    assert info["resend_of"] == original
    assert [(h["stage"], h["outcome"]) for h in info["history"]] == [("submission", "resend"), ("outbound", "changed")]
