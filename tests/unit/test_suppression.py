"""The suppression list's rules (domain/suppression.py): which replies are hard bounces, the reply a
suppressed recipient gets, and intake's RCPT-time check against its copy of the list."""

from __future__ import annotations

import pytest

from msgspool.domain.address import domain_of
from msgspool.domain.outcome import Reply
from msgspool.domain.routing import Router, TransportRoute
from msgspool.domain.suppression import BOUNCE, OPERATOR, Suppression, hard_bounce, refusal, suppression_key
from msgspool.spooler.intake import Intake

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("reply", "hard"), [
    (Reply(550, "5.1.1", "No such user"), True),
    (Reply(550, "5.1.10", "Recipient address has null MX"), True),
    (Reply(553, "5.1.3", "Bad recipient address syntax"), True),
    (Reply(550, "5.2.1", "Mailbox disabled"), True),
    (Reply(550, "", "no such user"), True),
    (Reply(552, "5.2.2", "Mailbox full"), False),
    (Reply(552, "5.3.4", "Message too big"), False),
    (Reply(554, "5.7.1", "Relay access denied"), False),
    (Reply(550, "5.7.1", "Rejected as spam"), False),
    (Reply(553, "5.1.7", "Bad sender address"), False),
    (Reply(554, "5.4.7", "delivery attempts exhausted"), False),
    (Reply(554, "5.4.6", "alias loop"), False),
    (Reply(554, "", "Transaction failed"), False),
    (Reply(450, "4.1.1", "try later"), False),
    (None, False),
])
def test_a_hard_bounce_is_a_remote_5xx_about_the_address(reply: Reply | None, hard: bool) -> None:
    assert hard_bounce(reply) is hard


def test_the_refusal_says_550_5_1_1_with_why_and_until_when() -> None:
    bounced = refusal(Suppression("gone@example.com", "550 5.1.1 No such user", NOW, NOW + 86400, BOUNCE))
    assert (bounced.code, bounced.enhanced) == (550, "5.1.1")
    assert bounced.text == ("<gone@example.com>: Recipient address suppressed until 2023-11-15T22:13:20Z"
                            " (it bounced: 550 5.1.1 No such user)")
    forever = refusal(Suppression("x@example.com", "asked to stop", NOW, None, OPERATOR))
    assert forever.text == "<x@example.com>: Recipient address suppressed until removed (asked to stop)"
    assert suppression_key(" Gone@Example.COM ") == "gone@example.com"


def test_intake_refuses_a_suppressed_remote_recipient_at_rcpt_while_the_entry_is_in_force() -> None:
    clock = [NOW]
    intake = Intake(Router(["localhost"], [TransportRoute("smtp", frozenset({"SMTP"}), domain_of)]),
                    clock=lambda: clock[0])
    assert intake.check_recipient("Gone@example.com") is None
    intake.suppressed = {"gone@example.com": Suppression("gone@example.com", "550 5.1.1 x", NOW, NOW + 10, BOUNCE)}
    refused = intake.check_recipient("Gone@example.com")
    assert refused is not None and refused.code == 550 and "suppressed" in refused.text
    assert intake.check_recipient("other@example.com") is None
    clock[0] = NOW + 11  # its time passed: mail goes again, before the copy is even read again
    assert intake.check_recipient("Gone@example.com") is None
