"""Recipient states: the table in recipient.py's docstring is the code's transition table, finals
are final, and every state is either final or pending."""

from __future__ import annotations

import re

import pytest

from msgspool.domain import recipient
from msgspool.domain.recipient import FINAL, PENDING, TRANSITIONS, Status, allowed


def documented_transitions() -> dict[Status, frozenset[Status]]:
    """The `next states` column of the docstring table, notes in parentheses removed."""
    lines = (recipient.__doc__ or "").splitlines()
    header = next(i for i, line in enumerate(lines) if "next states" in line)
    column = lines[header].index("next states")
    table: dict[str, str] = {}
    current = ""
    for line in lines[header + 2:]:
        if not line.strip():
            break
        first = line.split()[0]
        if first in {s.value for s in Status} and line.startswith("    " + first):
            current = first
        table[current] = table.get(current, "") + " " + line[column:]
    return {
        Status(state): frozenset(Status(s.strip()) for s in re.sub(r"\([^)]*\)", "", text).split(",") if s.strip())
        for state, text in table.items()
    }


def test_docstring_table_lists_every_state() -> None:
    assert set(documented_transitions()) == set(Status)


def test_transition_table_is_the_documented_one() -> None:
    assert documented_transitions() == TRANSITIONS


@pytest.mark.parametrize("state", sorted(FINAL))
def test_final_states_have_no_way_out(state: Status) -> None:
    assert state.final and not state.pending
    assert not any(allowed(state, new) for new in Status)


def test_every_state_is_either_final_or_pending() -> None:
    assert set(Status) == FINAL | PENDING and not FINAL & PENDING
    assert {Status.DELIVERED, Status.FAILED, Status.EXPIRED} == FINAL


def test_held_recipient_is_released_to_queued_never_straight_to_delivery() -> None:
    assert allowed(Status.HELD, Status.QUEUED)
    assert not allowed(Status.HELD, Status.ACTIVE)
    assert not allowed(Status.HELD, Status.DELIVERED)


def test_deferred_recipient_is_delivered_only_through_an_active_attempt() -> None:
    assert not allowed(Status.DEFERRED, Status.DELIVERED)
    assert allowed(Status.DEFERRED, Status.ACTIVE) and allowed(Status.ACTIVE, Status.DELIVERED)


def test_active_recipient_whose_lease_is_lost_goes_back_to_queued() -> None:
    assert allowed(Status.ACTIVE, Status.QUEUED)


def test_status_values_are_the_names_of_the_json_contract() -> None:
    assert {s.value for s in Status} == {"queued", "active", "deferred", "delivered", "failed", "held", "expired"}
