"""Recipient and message state changes, decided (issue 11.1: the store is persistence, the domain decides).

Each function here takes plain data — the outcome of an attempt, whether its message is held, how
often the message crashed its transport — and returns the decision: the recipient's new state, the
event that records it, the report it owes the sender, whether the message is held, kept or deleted
once finished. Nothing here reads or writes the spool. A store applies a decision as one guarded
write ("set status = X where status is still Y [and the node still holds it]") and reports whether
the guard held; it decides nothing itself (procrastinate's shape: the manager decides, the
connector runs named queries).

Every change of a recipient's state is a `Step`: a named move from some states to others, checked
against the table of domain/recipient.py when it is defined (a step the table does not allow cannot
be built) and each time it is taken (`Step.to`). The store's statements that write a recipient's
state are each bound to one step (stores/ops.py WRITES), and tests/unit/test_transition_writes.py
reads the SQL to prove that each says exactly its step and that no other statement writes a state.

    step               from                        to                  taken by
    ----------------   -------------------------   -----------------   ---------------------------------
    claim              queued, deferred            active              a delivery run claiming due work
    settle             active                      delivered, deferred, failed, expired, held
                                                                       an outcome (`settle`)
    give back          active                      queued, held        unclaim, watchdog, rescue, retire
    hold               queued, deferred            held                `queue hold`, a crashing transport
    hold in delivery   active                      held                an outbound hook's Hold or error
    release            held                        queued              `queue release`
    requeue            queued, deferred, held      queued              `queue requeue`

A recipient's first state is chosen when it is stored (queued, or active when handed to a delivery
node, or delivered/failed when intake settled it at once): that is its birth (`born`), not a
change. A message changes folder once: from the outbox to Sent Items when no recipient is pending
(`FINISH`, MAPI FinishedMsg). The sets of states the store's statements select by are the named
ones here (WAITING, PENDING, REQUEUE's sources), never a list of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from msgspool.domain.dsn import Action, RecipientDSN, report_action
from msgspool.domain.events import Event, EventType
from msgspool.domain.hooks import Draft, Hold, Preprocessed, Reject
from msgspool.domain.message import OUTBOX, SENT, Recipient, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import PENDING, TRANSITIONS, Status


class TransitionRefused(ValueError):
    """A change of state the table (domain/recipient.py TRANSITIONS) or the step does not allow."""


@dataclass(frozen=True, slots=True)
class Step:
    """A named change of state: from any of `sources` to one of `targets`."""

    name: str
    sources: frozenset[Status]
    targets: frozenset[Status]

    def __post_init__(self) -> None:
        for old, new in self.pairs():
            if new not in TRANSITIONS[old]:
                raise TransitionRefused(f"{self.name}: {old} -> {new} is not in the table")

    def pairs(self) -> set[tuple[Status, Status]]:
        """The (old, new) changes the step makes (staying in a state is no change)."""
        return {(old, new) for old in self.sources for new in self.targets if old != new}

    def to(self, new: Status) -> Status:
        """`new`, if the step may end there; else TransitionRefused."""
        if new not in self.targets:
            raise TransitionRefused(f"{self.name}: a recipient cannot become {new} this way")
        return new


def _step(name: str, sources: Iterable[Status], targets: Iterable[Status]) -> Step:
    return Step(name, frozenset(sources), frozenset(targets))


WAITING = frozenset({Status.QUEUED, Status.DEFERRED})
CLAIM = _step("claim", WAITING, {Status.ACTIVE})
SETTLE = _step("settle", {Status.ACTIVE},
               {Status.DELIVERED, Status.DEFERRED, Status.FAILED, Status.EXPIRED, Status.HELD})
GIVE_BACK = _step("give back", {Status.ACTIVE}, {Status.QUEUED, Status.HELD})
HOLD = _step("hold", WAITING, {Status.HELD})
HOLD_IN_DELIVERY = _step("hold in delivery", {Status.ACTIVE}, {Status.HELD})
RELEASE = _step("release", {Status.HELD}, {Status.QUEUED})
REQUEUE = _step("requeue", {Status.QUEUED, Status.DEFERRED, Status.HELD}, {Status.QUEUED})
STEPS = (CLAIM, SETTLE, GIVE_BACK, HOLD, HOLD_IN_DELIVERY, RELEASE, REQUEUE)
# The states a recipient may be stored in first: waiting, handed to a delivery node, or settled by
# intake at once (a local delivery, a refusal: no route, a suppressed address, an alias's error).
BORN = frozenset({Status.QUEUED, Status.ACTIVE, Status.DELIVERED, Status.FAILED})
# The state sets a statement may select recipients by (besides single states).
NAMED_SETS: Mapping[str, frozenset[Status]] = {"waiting": WAITING, "pending": PENDING,
                                               "requeued": REQUEUE.sources}
# A finished message's one move: (from folder, to folder), while none of its recipients is PENDING.
FINISH = (OUTBOX, SENT)

STATUS_EVENT: Mapping[Status, EventType] = {
    Status.DELIVERED: EventType.DELIVERED,
    Status.DEFERRED: EventType.DEFERRED,
    Status.FAILED: EventType.FAILED,
    Status.EXPIRED: EventType.EXPIRED,
    Status.HELD: EventType.HELD,
}


# --------------------------------------------------------------------------------------------
# An outcome recorded (settle).


@dataclass(frozen=True, slots=True)
class Settled:
    """What an outcome does to its recipient, as the store writes it (stores/sql settle_recipient).

    The report columns are written relative to what the row holds, since a report of an earlier
    debt may be written meanwhile by the reporter: `report` is the new debt (None: none new), owed
    only once per recipient when `report_once` (a delay notice: the row's warn_at is 0 once one was
    owed); `void_report` is a debt this outcome voids if it is still unwritten (a delay notice,
    untrue once the recipient is final); `warn_at` is when its delay notice falls due (0: owed now,
    and then never again; None: as it was)."""

    status: Status
    report: str | None
    report_once: bool
    void_report: str | None
    warn_at: float | None
    event: EventType | None


def settle(s: Settlement, *, held: bool, now: float) -> Settled:
    """The decision for one outcome of an active recipient: a temporary failure of a held message
    leaves it held (never attempted until released); the report it owes follows RFC 3461 NOTIFY,
    a delay notice only once it fell due (`s.warn_at`)."""
    status = SETTLE.to(Status.HELD if s.status is Status.DEFERRED and held else s.status)
    warn_now = status is Status.DEFERRED and s.warn_at is not None and s.warn_at <= now
    action = report_action(status, s.dsn or RecipientDSN(), handoff=s.handoff, warn_delays=warn_now)
    return Settled(status=status, report=None if action is None else str(action),
                   report_once=action is Action.DELAYED,
                   void_report=str(Action.DELAYED) if status.final else None,
                   warn_at=0.0 if warn_now else s.warn_at, event=STATUS_EVENT.get(status))


def needs_held_flag(s: Settlement) -> bool:
    """Does the decision for `s` depend on whether its message is held? (Only a deferral's: the
    store reads the flag for those alone, a statement each.)"""
    return s.status is Status.DEFERRED


def recipient_event(message_id: str, address: str, status: Status, reply: Reply | None, now: float,
                    transport: str | None, remote: str | None = None) -> Event:
    """The event recording a recipient's new state (for a state that has one: STATUS_EVENT)."""
    detail: dict[str, Any] = {"transport": transport}
    if reply is not None:
        detail["reply"] = reply.line()
        detail["dsn"] = reply.dsn
    if remote:
        detail["relay"] = remote
    return Event(STATUS_EVENT[status], message_id, now, recipient=address, detail=detail)


# --------------------------------------------------------------------------------------------
# Work given back, held, released, requeued.


def give_back(*, held: bool) -> Status:
    """An active recipient whose delivery is abandoned unattempted (its node stopped, died, or
    dropped it) waits again: held when its message is held, else queued (due now)."""
    return GIVE_BACK.to(Status.HELD if held else Status.QUEUED)


def hold() -> Status:
    """`queue hold` (and a crashing transport): the message is held, and its waiting recipients
    with it; those in delivery finish their attempt (an outcome of a held message stays held)."""
    return HOLD.to(Status.HELD)


def hold_in_delivery() -> Status:
    """The outbound hooks held the message: its recipients they were deciding for are held."""
    return HOLD_IN_DELIVERY.to(Status.HELD)


def release() -> Status:
    """`queue release`: the message's held recipients are queued, due now."""
    return RELEASE.to(Status.QUEUED)


def requeue() -> Status:
    """`queue requeue` (Postfix postsuper -r): the message's waiting and held recipients are
    queued, due now, for the outbound hooks to see the message again."""
    return REQUEUE.to(Status.QUEUED)


def born(status: Status) -> Status:
    """`status`, if a recipient may be stored in it first (BORN); else TransitionRefused."""
    if status not in BORN:
        raise TransitionRefused(f"a recipient is not stored {status} at first")
    return status


def birth_event(status: Status) -> EventType | None:
    """The event a recipient stored settled already records with its submission (delivered to a
    local mailbox, failed at once); one stored waiting or handed over records none."""
    return STATUS_EVENT.get(status) if status.final else None


def handed_over(*, node_live: bool) -> Status:
    """A recipient intake hands to a delivery node with its submission is stored active, held by
    that node, only while the node's lease is live; else queued, due now, for whichever node
    claims it (that node may no longer deliver)."""
    return born(Status.ACTIVE if node_live else Status.QUEUED)


def delay_notice_owed() -> str:
    """A deferred recipient whose delay notice fell due while it waited (no new outcome came)
    owes it now, unless it owes a report already; once per recipient (its warn_at becomes 0)."""
    return str(Action.DELAYED)


def claim() -> Status:
    """A delivery run claims due waiting recipients: they become active, held by its node."""
    return CLAIM.to(Status.ACTIVE)


# --------------------------------------------------------------------------------------------
# The outbound hooks' answer (MAPI preprocessing).

DROPPED = Reply(550, "5.7.1", "recipient removed by an outbound hook")


@dataclass(frozen=True, slots=True)
class HooksDecided:
    """What the outbound hooks' answer does to a message's active recipients: `failed` are the
    outcomes to settle (a rejection fails them all, a report owed; a recipient no draft keeps is
    dropped, none owed); with `hold`, the hooks did not finish (one failed) and the message is held
    as it is — they run again on release; else `drafts` are sent, the first as the stored message,
    each further one as a new message, and with `hold_drafts` (a hook's own Hold) they are kept
    held until released, sent as they are then (Postfix postsuper -H)."""

    failed: list[Settlement]
    hold: str | None
    drafts: list[Draft]
    hold_drafts: str | None


def hooks_decided(message_id: str, result: Preprocessed, active: Mapping[int, Recipient]) -> HooksDecided:
    if isinstance(result.verdict, Reject):
        return HooksDecided([Settlement(message_id, r.index, r.address, Status.FAILED, result.verdict.reply,
                                        attempted=False, dsn=r.dsn) for r in active.values()], None, [], None)
    if isinstance(result.verdict, Hold):
        return HooksDecided([], result.verdict.reason, [], None)
    placed = {r.index for draft in result.drafts for r in draft.recipients}
    dropped = [Settlement(message_id, r.index, r.address, Status.FAILED, DROPPED, attempted=False,
                          dsn=RecipientDSN(frozenset())) for i, r in active.items() if i not in placed]
    return HooksDecided(dropped, None, list(result.drafts), None if result.hold is None else result.hold.reason)


# --------------------------------------------------------------------------------------------
# The message: poison isolation, leaving the outbox, the report written once.


def poisoned(crashes: int, limit: int) -> str | None:
    """A message whose attempts crashed its transport `limit` times is held (poison isolation,
    as Exim freezes a message and Mailman moves a queue file to bad/): the reason, or None.
    A limit of 0 never holds."""
    if not limit or crashes < limit:
        return None
    return f"crashed its transport {crashes} times"


def deleted_when_finished(*, delete_after_submit: bool, reports_owed: bool) -> bool:
    """A finished message (no recipient pending: MAPI FinishedMsg) moves to Sent Items; it is
    deleted instead when its submitter asked for delete-after-submit, but only once it owes no
    report (the reports quote it)."""
    return delete_after_submit and not reports_owed


def report_stands(owed: Iterable[tuple[int, str]], standing: Iterable[tuple[int, str]]) -> bool:
    """May a report for the debts `owed` (index, action, as read) be written now? Only while
    every one still stands: one overtaken (a delay notice by a failure) or cleared (the same
    report written by another node) means this report would be wrong or written twice."""
    return set(owed) <= set(standing)
