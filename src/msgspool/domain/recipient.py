"""Recipient states and the allowed transitions between them.

Every recipient of an outbound message is in exactly one state. It changes only along these edges
(qmail's INTERNALS habit: the states and the single step between two, written down), by the named
steps of domain/transitions.py, which decide each change; the store only applies them:

    state       meaning                                   next states
    ---------   ---------------------------------------   -------------------------------------------
    queued      waiting for its first (or a flushed)      active, held, failed, expired, delivered
                attempt                                   (local delivery settles at submit)
    active      claimed by a delivery process (lease)     delivered, deferred, failed, expired, held,
                                                          queued (lease lost: crash or shutdown;
                                                          held/queued: given back unattempted when
                                                          its message is held or requeued)
    deferred    a temporary failure; waits for            active, queued (flush), held, expired
                next_attempt_at or its destination
    held        on hold by an operator or a hook;         queued (release), failed, expired
                never attempted until released
    delivered   the next hop took responsibility          (final)
    failed      permanently undeliverable                 (final)
    expired     the maximal lifetime passed               (final)

``responsible`` (MAPI PR_RESPONSIBILITY) names the transport that took the recipient at routing time.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HELD = "held"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def pending(self) -> bool:
        return not self.final


FINAL = frozenset({Status.DELIVERED, Status.FAILED, Status.EXPIRED})
PENDING = frozenset(Status) - FINAL

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.ACTIVE, Status.HELD, Status.FAILED, Status.EXPIRED, Status.DELIVERED}),
    Status.ACTIVE: frozenset(
        {Status.DELIVERED, Status.DEFERRED, Status.FAILED, Status.EXPIRED, Status.HELD, Status.QUEUED}
    ),
    Status.DEFERRED: frozenset({Status.ACTIVE, Status.QUEUED, Status.HELD, Status.EXPIRED}),
    Status.HELD: frozenset({Status.QUEUED, Status.FAILED, Status.EXPIRED}),
    Status.DELIVERED: frozenset(),
    Status.FAILED: frozenset(),
    Status.EXPIRED: frozenset(),
}


def allowed(old: Status, new: Status) -> bool:
    return new in TRANSITIONS[old]


class RecipientType(StrEnum):
    """MAPI PR_RECIPIENT_TYPE; `bcc` recipients never appear in content."""

    TO = "to"
    CC = "cc"
    BCC = "bcc"
