"""The SQL stores' `suppressions` table (domain/suppression.py says what an entry is and when an
address goes on the list): the operator's steps behind the Suppressions role, over a `Tx` as in
stores/ops.py — which also holds the two the queue takes itself: a suppressed recipient fails at
submission (`op_submit`), a hard bounce is listed when it is settled (`op_settle`)."""

from __future__ import annotations

from msgspool.domain.suppression import Suppression, suppression_key
from msgspool.stores.ops import Tx, in_force, list_suppressions, suppression_params

__all__ = ["in_force", "list_suppressions", "op_prune_suppressions", "op_suppress", "op_unsuppress", "signature"]


def op_suppress(tx: Tx, entry: Suppression) -> None:
    """An operator's entry: it replaces what the address had."""
    tx.execute(tx.q.suppress, suppression_params(entry))


def op_unsuppress(tx: Tx, address: str) -> bool:
    return tx.execute(tx.q.delete_suppression, {"address": suppression_key(address)}).rowcount > 0


def op_prune_suppressions(tx: Tx, now: float) -> int:
    return tx.execute(tx.q.prune_suppressions, {"now": now}).rowcount


def signature(tx: Tx) -> tuple[int, float | None]:
    """(entries, newest created_at): changes whenever an entry is added, replaced or removed."""
    count, newest = tx.execute(tx.q.suppressions_signature).fetchone()
    return int(count), newest
