"""Queue search over a `Tx` (the SQL stores' side of domain/selector.py): a page of the ids of the
messages a selector picks, in id order (ids sort by submission time, domain/ids.py), fast with
millions stored (issue 13.4).

How a page is found. Of the selector's terms the most selective one that has an index is the page's
*driver* (`_DRIVERS`, in order of preference: an exact recipient, an exact sender, a recipient's
domain, a sender's domain, a destination, a status, a mailbox, one folder; else any folder, by the
primary key). Its index range is read in id order after the cursor (newest first: backwards, before
it), a window of candidates at a time, and `search_check` keeps those every term holds for (the
driver's own again: cheap, and it keeps the check in one place). Windows grow (64, 128, ...
candidates) until the page is full, the range ends, or SEARCH_BUDGET candidates were read: a page
of a sparse search (a subject, a transport, terms that rarely meet) may so come back short, even
empty, with a cursor that goes on from the last candidate read. Every page costs at most the
budget, never a scan of the spool; tests/integration/test_search_plans.py holds each driver to its
index.

The age terms bound the range by id too (an id's time is within seconds of its submission: SMTP
makes it at MAIL, a copy when it is filed), with a margin; `search_check` compares `submitted_at`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from msgspool.domain.ids import id_floor
from msgspool.domain.message import MessageInfo
from msgspool.domain.selector import Selector
from msgspool.stores.ops import Tx, message_infos

SEARCH_BUDGET = 1_000  # candidates one page reads at most (1,000,000 queued: SQLite 7-20 us each, PostgreSQL ~40)
FIRST_WINDOW = 64
AGE_MARGIN = 900.0  # seconds between an id's time and its message's submitted_at, at most (SMTP's timeouts)
TOP = "~"  # above every id (ids are Crockford base 32: digits and capitals)


def search_params(where: Selector, now: float) -> dict[str, Any]:
    """The parameters of `search_check` (and of the drivers' own terms) for `where` at `now`."""
    latest, earliest = where.window(now)
    folders = where.searched_folders()
    sender, recipient = where.sender, where.recipient
    return {
        "folder_list": json.dumps(list(folders)) if folders else None, "mailbox": where.mailbox,
        "latest": latest, "earliest": -1.0 if earliest is None else earliest,
        "sender": sender if sender is not None and not sender.startswith("@") else None,
        "sender_domain": sender[1:] if sender and sender.startswith("@") else None,
        "subject": f"%{_like_escape(where.subject)}%" if where.subject else None,
        "recipient": recipient if recipient is not None and not recipient.startswith("@") else None,
        "recipient_domain": recipient[1:] if recipient and recipient.startswith("@") else None,
        "destination": where.destination, "transport": where.transport, "status": where.status,
        "recipient_terms": int(where.recipient_terms),
        "folder": folders[0] if len(folders) == 1 else None,
    }


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# (the parameter that makes a driver usable, the driver's statement): the first usable one drives.
_DRIVERS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("recipient", lambda q: q.search_by_recipient),
    ("sender", lambda q: q.search_by_sender),
    ("recipient_domain", lambda q: q.search_by_recipient_domain),
    ("sender_domain", lambda q: q.search_by_sender_domain),
    ("destination", lambda q: q.search_by_destination),
    ("status", lambda q: q.search_by_status),
    ("mailbox", lambda q: q.search_by_mailbox),
    ("folder", lambda q: q.search_by_folder),
)


def driver(tx: Tx, params: dict[str, Any], newest_first: bool = False) -> str:
    """The statement whose index range a search with `params` reads (see the module docstring),
    upwards from :after, or downwards from :upto when `newest_first`."""
    found = next((statement(tx.q) for key, statement in _DRIVERS if params[key] is not None),
                 tx.q.search_by_any_folder)
    return tx.q.descending(found) if newest_first else found


def id_range(where: Selector, now: float, after: str = "", newest_first: bool = False) -> tuple[str, str]:
    """(low, high): the ids a search may find lie strictly between them; `after`, a cursor,
    bounds the range from below, or from above when `newest_first`."""
    latest, earliest = where.window(now)
    low = id_floor(earliest - AGE_MARGIN) if earliest is not None else ""
    high = id_floor(latest + AGE_MARGIN) + TOP
    if after:
        low, high = (low, min(after, high)) if newest_first else (max(after, low), high)
    return low, high


def search_messages(tx: Tx, where: Selector, now: float, after: str = "", limit: int = 1000,
                    budget: int | None = None, newest_first: bool = False) -> tuple[list[str], str | None]:
    """A page of at most `limit` ids of the messages `where` picks among those submitted by `now`,
    in id order after the cursor `after` (newest first: in reverse id order, before it), and the
    cursor of the next page (None: there is none). Short pages are possible, see the module
    docstring."""
    if limit <= 0:
        return [], None
    budget = SEARCH_BUDGET if budget is None else budget
    params = search_params(where, now)
    statement = driver(tx, params, newest_first)
    low, high = id_range(where, now, after, newest_first)
    position = high if newest_first else low
    found: list[str] = []
    read, window = 0, FIRST_WINDOW
    while len(found) <= limit:
        if read >= budget:
            return found, position
        size = min(max(window, limit + 1 - len(found)), budget - read)
        bounds = {"after": low, "upto": position} if newest_first else {"after": position, "upto": high}
        candidates = [str(row[0]) for row in tx.execute(statement, {**params, **bounds, "limit": size})]
        if candidates:
            read += len(candidates)
            position = candidates[-1]
            checked = [str(row[0]) for row in
                       tx.execute(tx.q.search_check, {**params, "candidates": json.dumps(candidates)})]
            found += checked[::-1] if newest_first else checked  # search_check answers in id order
        if len(candidates) < size:
            return found[:limit], found[limit - 1] if len(found) > limit and limit else None
        window *= 2
    return found[:limit], found[limit - 1] if limit else None


def matching_messages(tx: Tx, where: Selector, now: float, after: str = "", limit: int = 1000) -> list[str]:
    """Up to `limit` ids `where` picks after `after`, in id order, as many as there are: the
    pages of `search_messages` joined until full (what a bulk run selects)."""
    ids: list[str] = []
    cursor: str | None = after
    while cursor is not None and len(ids) < limit:
        page, cursor = search_messages(tx, where, now, cursor, limit - len(ids))
        ids += page
    return ids


def messages_by_ids(tx: Tx, ids: Sequence[str]) -> list[MessageInfo]:
    """The messages `ids` with their recipients, as a listing shows them, in id order."""
    if not ids:
        return []
    return message_infos(tx, tx.execute(tx.q.messages_by_ids, {"page_ids": json.dumps(list(ids))}).fetchall())


def existing_messages(tx: Tx, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are stored (in any folder), in one statement."""
    if not ids:
        return set()
    return {str(row[0]) for row in tx.execute(tx.q.existing_messages, {"page_ids": json.dumps(list(ids))})}
