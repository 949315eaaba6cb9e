"""Selectors: which stored messages a queue search (`queue list --where`, GET /api/queue, the
dashboard) shows and a bulk action (`queue hold --where ...`) works on. One model for the CLI,
the HTTP API and the bulk runs.

A selector is a comma-separated list of TERM=VALUE; a message matches when every term does
(KumoMTA's and Stalwart's bulk admin, Postfix's `postqueue -j | jq | postsuper` in one step):

    destination=HOST    a recipient routed to this destination (a nexthop as `status` lists it)
    sender=ADDR         the envelope sender; @DOMAIN: any sender of that domain; <> the null sender
    recipient=ADDR      a recipient with this address (of any address type, a URL too); @DOMAIN: any
                        of that domain
    status=S            a recipient in this state (queued, active, deferred, held, ...)
    transport=T         a recipient routed to this transport
    older-than=D        submitted more than D ago: a number with s, m, h, d or w (90s, 1h, 2d)
    newer-than=D        submitted less than D ago
    subject=TEXT        the Subject contains TEXT (decoded, case-insensitive; at most 200 characters)
    folder=F            messages of folder F (outbox, inbox, sent, ...); F|G: of either; * any folder.
                        Not given: the outbox, or with a mailbox term every folder of that mailbox
    mailbox=ADDR        messages of this local mailbox (<>: the spool's own, whose outbox the queue is)

The recipient terms (destination, recipient, status, transport) must hold for one and the same
recipient. Values compare without regard to case. Pure code: the store turns a `Selector` into
its query (stores/ops.py `search_messages`: one index range per page, docs there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from msgspool.domain.address import mailbox_key
from msgspool.domain.message import INBOX, OUTBOX, SENT
from msgspool.domain.recipient import Status

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
TERMS = ("destination", "sender", "recipient", "status", "transport", "older-than", "newer-than", "subject",
         "folder", "mailbox")
RECIPIENT_TERMS = ("destination", "recipient", "status", "transport")
SUBJECT_MAX = 200  # characters of a subject term (and of the stored subject it is looked for in)
ANY_FOLDER = "*"
_OWN_FOLDERS = frozenset({OUTBOX, SENT, INBOX})
_FOLDER = re.compile(r"^[^\s/\\*|,]{1,100}$")


class SelectorError(ValueError):
    """A selector that cannot be used; the message names the bad term."""


@dataclass(frozen=True, slots=True)
class Selector:
    destination: str | None = None
    sender: str | None = None  # "" selects the null sender
    recipient: str | None = None
    status: str | None = None
    transport: str | None = None
    older_than: float | None = None  # seconds
    newer_than: float | None = None  # seconds
    subject: str | None = None  # lower case
    folders: tuple[str, ...] | None = None  # None: not given (the outbox); (): any folder
    mailbox: str | None = None
    text: str = field(default="", compare=False)  # as given, for messages and answers

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in TERMS:
            value = self.folders if name == "folder" else getattr(self, name.replace("-", "_"))
            if value is not None:
                out[name] = ("|".join(value) or ANY_FOLDER) if name == "folder" else value
        return out

    @property
    def recipient_terms(self) -> bool:
        return any(getattr(self, name) is not None for name in RECIPIENT_TERMS)

    def searched_folders(self) -> tuple[str, ...]:
        """The folders it looks in (() any): those named, else every folder of the mailbox named,
        else the outbox."""
        if self.folders is not None:
            return self.folders
        return () if self.mailbox is not None else (OUTBOX,)

    def in_outbox_only(self) -> bool:
        """Whether it selects outbox messages only (what a bulk action takes)."""
        return self.searched_folders() == (OUTBOX,)

    def window(self, now: float) -> tuple[float, float | None]:
        """(latest, earliest) submission time it picks at `now`: submitted at or before the first
        and after the second (None: no lower bound)."""
        latest = now - self.older_than if self.older_than is not None else now
        return latest, (now - self.newer_than if self.newer_than is not None else None)


def parse_duration(text: str) -> float:
    """Seconds of a duration such as 90s, 30m, 1h, 2d, 1w; ValueError otherwise."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (a number with s, m, h, d or w: 90s, 1h, 2d)")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_selector(text: str) -> Selector:
    """The selector `TERM=VALUE,...`; SelectorError naming the bad term (unknown, repeated, empty,
    or a value that cannot be: an unknown status, a bad duration)."""
    if not text.strip():
        raise SelectorError("empty selector: give TERM=VALUE terms, e.g. destination=example.com,older-than=1h")
    pairs = []
    for term in text.split(","):
        name, eq, value = term.partition("=")
        if not eq:
            raise SelectorError(f"bad term {term.strip()!r}: expected TERM=VALUE (terms: {', '.join(TERMS)})")
        pairs.append((name, value))
    return make(pairs, text.strip())


def make(pairs: list[tuple[str, str]], text: str | None = None) -> Selector:
    """The selector of (term, value) pairs (a value may hold a comma here: the HTTP query's terms)."""
    values: dict[str, Any] = {}
    for name, value in pairs:
        name, value = name.strip().lower().replace("_", "-"), value.strip()
        if name not in TERMS:
            raise SelectorError(f"unknown term {name!r} in {name}={value} (terms: {', '.join(TERMS)})")
        key = "folders" if name == "folder" else name.replace("-", "_")
        if key in values:
            raise SelectorError(f"term {name!r} given twice")
        values[key] = _value(name, value)
    if text is None:
        text = ",".join(f"{name.strip().lower()}={value.strip()}" for name, value in pairs)
    return Selector(**values, text=text)


def _value(name: str, value: str) -> Any:
    if name == "sender" and value == "<>":
        return ""
    if name == "mailbox" and value in ("", "<>"):
        return ""
    if not value:
        raise SelectorError(f"term {name!r} has no value")
    if name in ("older-than", "newer-than"):
        try:
            return parse_duration(value)
        except ValueError as err:
            raise SelectorError(f"term {name!r}: {err}") from None
    if name == "status":
        known = [str(s) for s in Status]
        if value.lower() not in known:
            raise SelectorError(f"term 'status': unknown status {value!r} (one of {', '.join(known)})")
    if name in ("sender", "recipient") and value.startswith("@") and len(value) == 1:
        raise SelectorError(f"term {name!r}: '@' names no domain")
    if name == "sender" and value.count("@") != 1:
        raise SelectorError(f"term {name!r}: {value!r} is not an address or @domain")
    if name == "subject" and len(value) > SUBJECT_MAX:
        raise SelectorError(f"term 'subject': at most {SUBJECT_MAX} characters")
    if name == "folder":
        return _folders(value)
    if name == "mailbox":
        return mailbox_key(value)
    return value.lower()


def _folder_name(name: str) -> str:
    """The spool's own folders (outbox, sent, inbox) in any case, as INBOX is in IMAP (RFC 3501
    §5.1); every other folder as it is named (a Sieve `fileinto "Reports"` files into Reports)."""
    return name.lower() if name.lower() in _OWN_FOLDERS else name


def _folders(value: str) -> tuple[str, ...]:
    if value == ANY_FOLDER:
        return ()
    folders = tuple(dict.fromkeys(_folder_name(f.strip()) for f in re.split(r"[|,]", value)))
    for folder in folders:
        if not _FOLDER.match(folder):
            raise SelectorError(f"term 'folder': {folder!r} is not a folder name (or * for any folder)")
    return folders


def from_json(where: object) -> Selector:
    """A selector given as JSON (the HTTP API): the text form, or an object {term: value}."""
    if isinstance(where, str):
        return parse_selector(where)
    if not isinstance(where, Mapping) or not where:
        raise SelectorError('where must be a selector string or an object such as {"destination": "example.com"}')
    pairs = []
    for name, value in where.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SelectorError(f"term {name!r}: the value must be a string")
        if "," in str(name) or ("," in str(value) and str(name) != "subject"):
            raise SelectorError(f"term {name!r}: a value holds no comma")
        pairs.append((str(name), str(value)))
    return make(pairs)
