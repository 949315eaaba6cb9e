"""Intake.build: every recipient routed once (local copies delivered at submit, unroutable ones failed),
loops refused, and the outbox message ready for the store."""

from __future__ import annotations

import pytest

from msgspool.domain.address import domain_of
from msgspool.domain.content import count_hops
from msgspool.domain.outcome import NO_ROUTE, Reply
from msgspool.domain.recipient import RecipientType, Status
from msgspool.domain.routing import LOCAL, Router, TransportRoute
from msgspool.errors import SubmitError
from msgspool.spooler.intake import Intake, Submission, due_now, mark_active

NOW = 1_700_000_000.0
CONTENT = b"Subject: hi\r\n\r\nhello\r\n"


def intake(mailboxes: tuple[str, ...] = (), hopcount_limit: int = 50) -> Intake:
    router = Router(["localhost"], [TransportRoute("smtp", frozenset({"SMTP"}), domain_of)])
    return Intake(router, hopcount_limit=hopcount_limit, mailboxes=mailboxes, clock=lambda: NOW)


def submission(*recipients: str, content: bytes = CONTENT, **kwargs: object) -> Submission:
    return Submission(sender="app@example.org", recipients=list(recipients), content=content, **kwargs)


def test_local_recipient_is_delivered_at_submit_as_a_copy_in_its_mailbox() -> None:
    message, copies = intake().build(submission("Bob@LocalHost"))
    [bob] = message.recipients
    assert (bob.status, bob.transport, bob.nexthop, bob.attempts) == (Status.DELIVERED, LOCAL, "bob@localhost", 1)
    assert bob.last_reply is not None and bob.last_reply.code == 250
    [copy] = copies
    # folder "": the receive folder, chosen when the copy is filed
    assert (copy.mailbox, copy.folder, copy.content, copy.recipients) == ("bob@localhost", "", CONTENT, [])
    assert copy.full_content() == b"Return-Path: <app@example.org>\r\nDelivered-To: Bob@LocalHost\r\n" + CONTENT
    assert copy.id != message.id


def test_remote_recipient_is_queued_for_its_transport_and_due_now() -> None:
    message, copies = intake().build(submission("user@Example.COM"))
    [user] = message.recipients
    assert (user.status, user.transport, user.nexthop, user.next_attempt_at) == (
        Status.QUEUED, "smtp", "example.com", NOW)
    assert user.destination == "smtp:example.com"
    assert copies == [] and message.folder == "outbox" and message.submitted_at == NOW


def test_deferred_delivery_makes_the_first_attempt_wait_until_deliver_after() -> None:
    message, _ = intake().build(submission("user@example.com", deliver_after=NOW + 3600))
    assert message.recipients[0].next_attempt_at == NOW + 3600
    assert due_now(message) == 0


def test_recipient_of_an_address_type_no_transport_takes_fails_550_5_4_4() -> None:
    message, copies = intake().build(submission("cn=bob;o=acme", addrtypes=["x400"]))
    [bob] = message.recipients
    assert (bob.status, bob.last_reply, bob.addrtype, bob.transport) == (Status.FAILED, NO_ROUTE, "X400", None)
    assert (NO_ROUTE.code, NO_ROUTE.enhanced) == (550, "5.4.4")
    assert copies == []


def test_duplicate_recipients_are_dropped_ignoring_case_per_address_type() -> None:
    message, copies = intake().build(submission("a@example.com", "A@Example.com", "bob@localhost",
                                                "BOB@localhost", "a@example.com", addrtypes=["SMTP"] * 4 + ["HTTP"]))
    assert [(r.address, r.addrtype) for r in message.recipients] == [
        ("a@example.com", "SMTP"), ("bob@localhost", "SMTP"), ("a@example.com", "HTTP")]
    assert [r.index for r in message.recipients] == [0, 1, 2]
    assert len(copies) == 1


def test_recipient_types_are_taken_from_the_submission() -> None:
    message, _ = intake().build(submission("a@example.com", "b@example.com",
                                           types=[RecipientType.CC, RecipientType.BCC]))
    assert [r.type for r in message.recipients] == [RecipientType.CC, RecipientType.BCC]


def test_more_received_headers_than_the_hop_limit_is_refused_as_a_loop_554_5_4_6() -> None:
    looping = b"Received: from a by b\r\n" * 4 + CONTENT
    with pytest.raises(SubmitError) as caught:
        intake(hopcount_limit=3).build(submission("user@example.com", content=looping))
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (554, "5.4.6")


def test_exactly_the_hop_limit_is_still_accepted() -> None:
    message, _ = intake(hopcount_limit=4).build(submission("u@example.com", content=b"Received: x\r\n" * 4 + CONTENT))
    assert len(message.recipients) == 1


def test_only_received_headers_in_the_header_section_count_as_hops() -> None:
    content = b"received: one\r\nX-Received: not a hop\r\nSubject: s\r\n\r\nReceived: in the body\r\n"
    assert count_hops(content) == 1


def test_submission_without_recipients_is_refused_554_5_5_1() -> None:
    with pytest.raises(SubmitError) as caught:
        intake().build(submission())
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (554, "5.5.1")


def test_queue_id_chosen_in_advance_is_kept() -> None:
    message, _ = intake().build(submission("u@example.com", message_id="01ABCDEFGHJKMNPQRS"))
    assert message.id == "01ABCDEFGHJKMNPQRS"


def test_mark_active_takes_only_recipients_due_at_submission() -> None:
    message, _ = intake().build(submission("u@example.com", "bob@localhost", "cn=x",
                                           addrtypes=["SMTP", "SMTP", "X400"]))
    assert due_now(message) == 1
    mark_active(message)
    assert [r.status for r in message.recipients] == [Status.ACTIVE, Status.DELIVERED, Status.FAILED]


def test_check_recipient_refuses_unknown_local_user_when_mailboxes_are_listed() -> None:
    checker = intake(mailboxes=("Alice@localhost",))
    assert checker.check_recipient("alice@LOCALHOST") is None
    assert checker.check_recipient("postmaster@localhost") is None
    reply = checker.check_recipient("bob@localhost")
    assert reply is not None and (reply.code, reply.enhanced) == (550, "5.1.1")


def test_check_recipient_accepts_any_local_user_when_no_mailboxes_are_listed() -> None:
    assert intake().check_recipient("anyone@localhost") is None


def test_check_recipient_refuses_an_address_without_route_550_5_1_2() -> None:
    assert intake().check_recipient("x@example.com", "X400") == Reply(
        550, "5.1.2", "<x@example.com>: no transport for this address")


# -- known bugs (see the report); each fails today and must start passing once fixed ----------------


def test_build_fails_a_local_recipient_whose_mailbox_does_not_exist() -> None:
    message, copies = intake(mailboxes=("alice@localhost",)).build(submission("bob@localhost"))
    assert message.recipients[0].status is Status.FAILED
    assert copies == []


def test_check_recipient_exempts_only_postmaster_itself_from_the_mailbox_list() -> None:
    reply = intake(mailboxes=("alice@localhost",)).check_recipient("postmasterx@localhost")
    assert reply is not None and reply.code == 550


def test_build_refuses_an_address_with_a_line_break() -> None:
    with pytest.raises(SubmitError):
        intake().build(submission("x\r\nX-Injected: yes@localhost"))


def test_build_refuses_addrtypes_that_do_not_match_the_recipients() -> None:
    with pytest.raises(SubmitError):
        intake().build(submission("a@example.com", "b@example.com", addrtypes=["SMTP"]))


@pytest.mark.parametrize("controls", [
    {"deliver_after": 1e300}, {"deliver_after": -1.0}, {"expires_at": float("nan")}, {"expires_at": float("inf")},
    {"priority": 2}, {"priority": 10**30}, {"max_attempts": -1}, {"max_attempts": 10**30},
])
def test_scheduling_values_the_store_cannot_hold_or_show_are_refused(controls: dict[str, object]) -> None:
    # Every front end goes through intake: the Python API and sendmail are held to what HTTP checks.
    with pytest.raises(SubmitError) as refused:
        intake().build(submission("x@example.com", **controls))
    assert refused.value.reply.code == 501 and next(iter(controls)) in refused.value.reply.text
