"""Delivery status reports received as mail (domain/bounces.py, RFC 3464 / RFC 6522): the message
they are about (the returned header's Message-ID, the ENVID) and each recipient's verdict, read
from a report as Postfix writes one; what is no report is None."""

from __future__ import annotations

from msgspool.domain.bounces import looks_like_report, message_id_of, read_report
from msgspool.domain.suppression import hard_bounce


def report(status: str = "5.1.1", action: str = "failed", diagnostic: str = "smtp; 550 5.1.1 <bob@remote.example>:"
           " Recipient address rejected: User unknown", returned: str = "text/rfc822-headers") -> bytes:
    original = ("From: alice@localhost\r\nTo: bob@remote.example\r\nMessage-ID: <abc.123@mx.test>\r\n"
                "Subject: hello\r\n")
    return (
        "From: MAILER-DAEMON@relay.example (Mail Delivery System)\r\nTo: alice@localhost\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; relay.example\r\nOriginal-Envelope-Id: ENV42\r\nArrival-Date: Sun, 6 Dec 2026\r\n\r\n"
        f"Final-Recipient: rfc822; bob@remote.example\r\nOriginal-Recipient: rfc822;Bob@Remote.example\r\n"
        f"Action: {action}\r\nStatus: {status}\r\nRemote-MTA: dns; mx.remote.example\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n\r\n"
        "Final-Recipient: rfc822; carol@remote.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n"
        f"--B\r\nContent-Type: {returned}\r\n\r\n"
        + (original if returned == "text/rfc822-headers" else original + "\r\nbody\r\n")
        + "\r\n--B--\r\n").encode()


def test_a_postfix_report_gives_the_original_message_id_envid_and_verdicts() -> None:
    found = read_report(report())
    assert found is not None
    assert (found.message_id, found.envid, found.reporting_mta) == ("<abc.123@mx.test>", "ENV42", "relay.example")
    bob, carol = found.recipients
    assert (bob.address, bob.original, bob.action, bob.status) == (
        "bob@remote.example", "Bob@Remote.example", "failed", "5.1.1")
    assert bob.addresses == ("Bob@Remote.example", "bob@remote.example")
    assert (bob.reply.code, bob.reply.enhanced) == (550, "5.1.1") and hard_bounce(bob.reply)
    assert (carol.action, carol.status) == ("delayed", "4.4.1") and not hard_bounce(carol.reply)


def test_the_whole_original_returned_also_gives_its_message_id() -> None:
    found = read_report(report(returned="message/rfc822"))
    assert found is not None and found.message_id == "<abc.123@mx.test>"


def test_a_full_mailbox_or_a_policy_refusal_is_no_hard_bounce_and_a_status_without_diagnostic_reads() -> None:
    for status in ("5.2.2", "5.7.1"):
        found = read_report(report(status=status, diagnostic=f"smtp; 550 {status} no"))
        assert found is not None and not hard_bounce(found.recipients[0].reply)
    found = read_report(report(diagnostic="X-Postfix; host said nothing"))
    assert found is not None and (found.recipients[0].reply.code, found.recipients[0].reply.enhanced) == (550, "5.1.1")


def test_what_is_no_delivery_status_report_is_none() -> None:
    assert read_report(b"Subject: hi\r\n\r\nmultipart/report delivery-status\r\n") is None
    mdn = report().replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    assert looks_like_report(mdn) and read_report(mdn) is None  # a read receipt (RFC 8098)
    assert not looks_like_report(b"Subject: hi\r\n\r\nhello\r\n")


def test_message_id_of_reads_the_header_only() -> None:
    assert message_id_of(b"Subject: x\r\nMessage-ID:\r\n <a@b>\r\n\r\nMessage-ID: <body@x>\r\n") == "<a@b>"
    assert message_id_of(b"Subject: x\r\n\r\n") == ""
