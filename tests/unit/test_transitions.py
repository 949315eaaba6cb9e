"""The domain's decisions on recipient and message state (domain/transitions.py), as plain data:
the state an outcome leads to, the report it owes, poison isolation, what a finished message
becomes; and the steps refuse what the table does not allow."""

from __future__ import annotations

from typing import Any

import pytest

from msgspool.domain import transitions
from msgspool.domain.dsn import Handoff, Notify, RecipientDSN
from msgspool.domain.events import EventType
from msgspool.domain.hooks import Draft, DraftRecipient, Hold, Preprocessed, Reject
from msgspool.domain.message import Recipient, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import TRANSITIONS, Status
from msgspool.domain.transitions import Step, TransitionRefused

BUSY = Reply(450, "4.2.1", "busy")
OK = Reply(250, "2.0.0", "ok")
NOW = 1000.0


def outcome(status: Status, reply: Reply = BUSY, **kw: Any) -> Settlement:
    return Settlement("m", 0, "b@example.com", status, reply, **kw)


def test_a_step_the_table_does_not_allow_cannot_be_defined() -> None:
    with pytest.raises(TransitionRefused, match="held -> active"):
        Step("release to delivery", frozenset({Status.HELD}), frozenset({Status.ACTIVE}))
    with pytest.raises(TransitionRefused):
        Step("revive", frozenset({Status.DELIVERED}), frozenset({Status.QUEUED}))


def test_a_step_refuses_a_state_it_does_not_lead_to() -> None:
    with pytest.raises(TransitionRefused, match="settle"):
        transitions.SETTLE.to(Status.QUEUED)  # a lost lease is given back, not settled
    assert transitions.SETTLE.to(Status.DELIVERED) is Status.DELIVERED


def test_every_step_is_in_the_table() -> None:
    for step in transitions.STEPS:
        assert step.pairs() and all(new in TRANSITIONS[old] for old, new in step.pairs()), step.name


def test_a_delivered_outcome_is_delivered_with_its_event_and_no_report_unless_asked() -> None:
    decided = transitions.settle(outcome(Status.DELIVERED, reply=OK), held=False, now=NOW)
    assert (decided.status, decided.event, decided.report) == (Status.DELIVERED, EventType.DELIVERED, None)
    assert decided.void_report == "delayed"  # final: a delay notice not written yet is untrue now


def test_success_asked_for_owes_delivered_or_relayed() -> None:
    success = RecipientDSN(frozenset({Notify.SUCCESS}))
    assert transitions.settle(outcome(Status.DELIVERED, reply=OK, dsn=success), held=False,
                              now=NOW).report == "delivered"
    assert transitions.settle(outcome(Status.DELIVERED, reply=OK, dsn=success, handoff=Handoff.RELAY),
                              held=False, now=NOW).report == "relayed"


def test_a_failure_owes_its_report_unless_notify_said_otherwise() -> None:
    assert transitions.settle(outcome(Status.FAILED), held=False, now=NOW).report == "failed"
    never = RecipientDSN(frozenset())
    assert transitions.settle(outcome(Status.EXPIRED, dsn=never), held=False, now=NOW).report is None


def test_a_deferral_of_a_held_message_leaves_it_held() -> None:
    decided = transitions.settle(outcome(Status.DEFERRED, next_attempt_at=NOW + 60), held=True, now=NOW)
    assert (decided.status, decided.event) == (Status.HELD, EventType.HELD)
    assert transitions.settle(outcome(Status.DEFERRED), held=False, now=NOW).status is Status.DEFERRED
    assert transitions.settle(outcome(Status.FAILED), held=True, now=NOW).status is Status.FAILED


def test_only_a_deferral_needs_the_held_flag() -> None:
    assert transitions.needs_held_flag(outcome(Status.DEFERRED))
    assert not any(transitions.needs_held_flag(outcome(s)) for s in (Status.DELIVERED, Status.FAILED,
                                                                      Status.EXPIRED))


def test_a_deferral_owes_its_delay_notice_once_when_it_fell_due() -> None:
    early = transitions.settle(outcome(Status.DEFERRED, warn_at=NOW + 10), held=False, now=NOW)
    assert (early.report, early.warn_at, early.void_report) == (None, NOW + 10, None)
    due = transitions.settle(outcome(Status.DEFERRED, warn_at=NOW - 1), held=False, now=NOW)
    assert (due.report, due.report_once, due.warn_at) == ("delayed", True, 0.0)
    failed = transitions.settle(outcome(Status.FAILED), held=False, now=NOW)
    assert not failed.report_once


def test_work_given_back_waits_held_or_queued() -> None:
    assert transitions.give_back(held=True) is Status.HELD
    assert transitions.give_back(held=False) is Status.QUEUED


def test_operator_steps_lead_where_the_table_says() -> None:
    assert (transitions.hold(), transitions.hold_in_delivery(), transitions.release(), transitions.requeue(),
            transitions.claim()) == (Status.HELD, Status.HELD, Status.QUEUED, Status.QUEUED, Status.ACTIVE)


def test_a_message_is_held_once_it_crashed_its_transport_limit_times() -> None:
    assert transitions.poisoned(2, 3) is None
    assert transitions.poisoned(3, 3) == "crashed its transport 3 times"
    assert transitions.poisoned(100, 0) is None  # 0: never


def test_a_finished_message_is_deleted_only_if_asked_and_owing_no_report() -> None:
    assert transitions.deleted_when_finished(delete_after_submit=True, reports_owed=False)
    assert not transitions.deleted_when_finished(delete_after_submit=True, reports_owed=True)
    assert not transitions.deleted_when_finished(delete_after_submit=False, reports_owed=False)


def test_a_report_is_written_only_while_every_debt_it_covers_stands() -> None:
    assert transitions.report_stands([(0, "failed")], [(0, "failed"), (1, "delayed")])
    assert not transitions.report_stands([(0, "delayed")], [(0, "failed")])  # overtaken
    assert not transitions.report_stands([(0, "failed")], [])  # written by another node


def test_the_event_of_a_new_state_carries_reply_and_relay() -> None:
    event = transitions.recipient_event("m", "b@example.com", Status.DEFERRED, BUSY, NOW, "smtp", "mx.example.com")
    assert (event.type, event.recipient, event.detail) == (
        EventType.DEFERRED, "b@example.com",
        {"transport": "smtp", "reply": BUSY.line(), "dsn": BUSY.dsn, "relay": "mx.example.com"})


def test_a_recipient_is_stored_first_waiting_handed_over_or_settled_by_intake() -> None:
    assert {transitions.born(s) for s in (Status.QUEUED, Status.ACTIVE, Status.DELIVERED, Status.FAILED)} == \
        transitions.BORN
    for status in (Status.DEFERRED, Status.HELD, Status.EXPIRED):
        with pytest.raises(TransitionRefused):
            transitions.born(status)


def test_a_hand_over_to_a_node_whose_lease_ran_out_is_stored_queued() -> None:
    assert transitions.handed_over(node_live=True) is Status.ACTIVE
    assert transitions.handed_over(node_live=False) is Status.QUEUED


def test_only_a_recipient_stored_settled_records_an_event_with_its_submission() -> None:
    assert transitions.birth_event(Status.DELIVERED) is EventType.DELIVERED
    assert transitions.birth_event(Status.FAILED) is EventType.FAILED
    assert transitions.birth_event(Status.QUEUED) is None and transitions.birth_event(Status.ACTIVE) is None


def active_pair() -> dict[int, Recipient]:
    return {i: Recipient(address, status=Status.ACTIVE, index=i)
            for i, address in enumerate(("b@example.com", "c@example.com"))}


def test_a_rejection_by_the_hooks_fails_every_active_recipient_unattempted() -> None:
    decided = transitions.hooks_decided("m", Preprocessed([], verdict=Reject.because("no")), active_pair())
    assert [(s.index, s.status, s.attempted, s.reply) for s in decided.failed] == [
        (0, Status.FAILED, False, Reply(550, "5.7.1", "no")), (1, Status.FAILED, False, Reply(550, "5.7.1", "no"))]
    assert decided.drafts == [] and decided.hold is None


def test_a_failing_hook_holds_the_message_as_it_is() -> None:
    decided = transitions.hooks_decided("m", Preprocessed([], verdict=Hold("hook x failed")), active_pair())
    assert (decided.hold, decided.failed, decided.drafts) == ("hook x failed", [], [])


def test_a_recipient_no_draft_keeps_is_dropped_owing_no_report_and_a_hooks_hold_keeps_the_drafts_held() -> None:
    draft = Draft("m", "a@example.org", [DraftRecipient("b@example.com", index=0)], b"x")
    decided = transitions.hooks_decided("m", Preprocessed([draft], hold=Hold("review")), active_pair())
    [dropped] = decided.failed
    assert (dropped.index, dropped.reply, dropped.dsn) == (1, transitions.DROPPED, RecipientDSN(frozenset()))
    assert transitions.settle(dropped, held=False, now=NOW).report is None
    assert (decided.drafts, decided.hold, decided.hold_drafts) == ([draft], None, "review")
