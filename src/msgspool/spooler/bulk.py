"""Bulk actions by selector: `msgspool queue hold|release|delete|flush|requeue --where ...` and
POST /api/queue/actions (KumoMTA's and Stalwart's bulk admin; what Postfix users script with
`postqueue -j | jq | postsuper`).

A run first reads the ids the selector picks (domain/selector.py), a page at a time by index,
among the messages submitted by its start: that is the count `--dry-run` gives, and the set the
action then works on, whatever arrives meanwhile. It then applies the action one chunk of
MESSAGE_CHUNK messages per store transaction (stores/ops.py), so that intake's commits interleave
with a run over a million, through the same Spooler operations as `queue hold ID`: the running
delivery drops what it held of them from memory, transactions in flight go on. A message gone
since it was selected is skipped; one a transport has in flight is reported, as by `queue hold ID`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspool.domain.selector import Selector, SelectorError
from msgspool.errors import NotFound, UnableToAbort
from msgspool.ports import Store
from msgspool.stores.ops import MESSAGE_CHUNK

ACTIONS = ("hold", "release", "delete", "flush", "requeue")
Progress = Callable[[int, int], None]  # (messages done, messages selected)
Apply = Callable[[str, list[str]], Awaitable[dict[str, Any]]]  # (action, a chunk of ids) -> its answer


@dataclass
class BulkResult:
    """What a bulk run selected and did: one JSON object (`--json`, the HTTP answer)."""

    action: str
    where: Selector
    dry_run: bool
    selected: list[str]
    done: list[str] = field(default_factory=list)
    in_flight: dict[str, list[str]] = field(default_factory=dict)
    flushed: int = 0  # flush: recipients due now

    def to_json(self, *, ids: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "where": self.where.to_json(), "dry_run": self.dry_run,
                               "matched": len(self.selected)}
        if self.dry_run:
            out["ids"] = self.selected if ids else None
            return out
        out["count"] = len(self.done)
        if ids:
            out["ids"] = self.done
        out["in_flight"] = self.in_flight
        if self.action == "flush":
            out["flushed"] = self.flushed
        return out


async def select(store: Store, where: Selector, now: float | None = None,
                 chunk: int = MESSAGE_CHUNK) -> list[str]:
    """Every id the selector picks among the outbox messages submitted by `now`, in id order;
    SelectorError for a selector of other folders (the actions act on the queue: the outbox)."""
    if not where.in_outbox_only():
        raise SelectorError("a bulk action works on the outbox: give no folder or mailbox term but folder=outbox")
    now = time.time() if now is None else now
    selected: list[str] = []
    while page := await store.matching(where, now, after=selected[-1] if selected else "", limit=chunk):
        selected += page
        if len(page) < chunk:
            break
    return selected


async def run(store: Store, apply: Apply, action: str, where: Selector, *, dry_run: bool = False,
              progress: Progress | None = None, chunk: int = MESSAGE_CHUNK) -> BulkResult:
    """Select, then (unless `dry_run`) apply `action` a chunk at a time, telling `progress`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    result = BulkResult(action, where, dry_run, await select(store, where, chunk=chunk))
    if dry_run:
        return result
    total = len(result.selected)
    for start in range(0, total, chunk):
        answer = await apply(action, result.selected[start:start + chunk])
        result.done += answer["ids"]
        result.in_flight.update(answer.get("in_flight") or {})
        result.flushed += int(answer.get("flushed") or 0)
        if progress is not None:
            progress(min(start + chunk, total), total)
    return result


async def apply_chunk(spooler: Any, action: str, ids: Sequence[str]) -> dict[str, Any]:
    """One chunk on a Spooler: {ids: those it took, in_flight: {id: [addresses]}, flushed}. Ids
    gone since they were selected are skipped; in-flight recipients are reported, not an error."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    ids = list(ids)
    while True:
        try:
            if action == "flush":
                return {"ids": ids, "in_flight": {}, "flushed": await spooler.flush(ids) if ids else 0}
            return {"ids": await getattr(spooler, action)(ids) if ids else [], "in_flight": {}}
        except NotFound as err:  # deleted meanwhile (delivered, expired, another operator)
            gone = str(err.args[0]) if err.args else ""
            if gone not in ids:
                raise
            ids.remove(gone)
        except UnableToAbort as err:  # a hold holds the rest of such a message; a delete leaves it
            taken = err.done + (list(err.in_flight) if action == "hold" else [])
            return {"ids": taken, "in_flight": err.in_flight}
