"""The SQL stores' `suppressions` table (domain/suppression.py says what an entry is and when an
address goes on the list): the operator's steps behind the Suppressions role, over a `Tx` as in
stores/ops.py — which also holds the two the queue takes itself: a suppressed recipient fails at
submission (`op_submit`), a hard bounce is listed when it is settled (`op_settle`)."""

from __future__ import annotations

from msgspool.domain.suppression import Suppression, suppression_key
from msgspool.stores.ops import Tx, in_force, list_suppressions, suppression_params

__all__ = ["in_force", "list_suppressions", "op_prune_suppressions", "op_suppress", "op_suppress_bounce",
           "op_unsuppress", "relayed_to", "signature"]


def op_suppress(tx: Tx, entry: Suppression) -> None:
    """An operator's entry: it replaces what the address had."""
    tx.execute(tx.q.suppress, suppression_params(entry))


def op_suppress_bounce(tx: Tx, entry: Suppression) -> None:
    """A hard bounce's entry: new, or a later end for one that has an end (one until removed stays)."""
    tx.execute(tx.q.suppress_bounce, suppression_params(entry))


def relayed_to(tx: Tx, sender: str, recipient: str, since: float, limit: int = 20) -> list[tuple[str, str]]:
    """(message id, transport) of the messages of `sender` whose `recipient` was handed on since
    `since`, newest first (a report received later as mail is matched against them)."""
    rows = tx.execute(tx.q.relayed_to, {"sender": sender.lower(), "recipient": recipient.lower(), "since": since,
                                        "limit": limit}).fetchall()
    return [(str(message_id), str(transport or "")) for message_id, transport in rows]


def op_unsuppress(tx: Tx, address: str) -> bool:
    return tx.execute(tx.q.delete_suppression, {"address": suppression_key(address)}).rowcount > 0


def op_prune_suppressions(tx: Tx, now: float) -> int:
    return tx.execute(tx.q.prune_suppressions, {"now": now}).rowcount


def signature(tx: Tx) -> tuple[int, float | None]:
    """(entries, newest created_at): changes whenever an entry is added, replaced or removed."""
    count, newest = tx.execute(tx.q.suppressions_signature).fetchone()
    return int(count), newest
