"""Selectors: which queued messages a bulk action works on (`queue hold --where ...`).

A selector is a comma-separated list of TERM=VALUE; a message matches when every term does
(KumoMTA's and Stalwart's bulk admin, Postfix's `postqueue -j | jq | postsuper` in one step):

    destination=HOST    a recipient routed to this destination (a nexthop as `status` lists it)
    sender=ADDR         the envelope sender; @DOMAIN: any sender of that domain; <> the null sender
    recipient=ADDR      a recipient with this address (of any address type, a URL too); @DOMAIN: any
                        of that domain
    status=S            a recipient in this state (queued, active, deferred, held, ...)
    transport=T         a recipient routed to this transport
    older-than=D        submitted more than D ago: a number with s, m, h, d or w (90s, 1h, 2d)

The recipient terms (destination, recipient, status, transport) must hold for one and the same
recipient. Values compare without regard to case. Pure code: the store turns a `Selector` into
its query (stores/ops.py `matching_messages`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from msgspool.domain.recipient import Status

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
TERMS = ("destination", "sender", "recipient", "status", "transport", "older-than")


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
    text: str = field(default="", compare=False)  # as given, for messages and answers

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name.replace("-", "_")) for name in TERMS
                if getattr(self, name.replace("-", "_")) is not None}

    def like(self, value: str | None) -> str | None:
        """A LIKE pattern (escape character backslash) for an address term: exact, or @DOMAIN."""
        if value is None:
            return None
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "%" + escaped if value.startswith("@") else escaped


def parse_duration(text: str) -> float:
    """Seconds of a duration such as 90s, 30m, 1h, 2d, 1w; ValueError otherwise."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (a number with s, m, h, d or w: 90s, 1h, 2d)")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_selector(text: str) -> Selector:
    """The selector `TERM=VALUE,...`; SelectorError naming the bad term (unknown, repeated, empty,
    or a value that cannot be: an unknown status, a bad duration)."""
    values: dict[str, Any] = {}
    if not text.strip():
        raise SelectorError("empty selector: give TERM=VALUE terms, e.g. destination=example.com,older-than=1h")
    for term in text.split(","):
        name, eq, value = term.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq:
            raise SelectorError(f"bad term {term.strip()!r}: expected TERM=VALUE (terms: {', '.join(TERMS)})")
        if name not in TERMS:
            raise SelectorError(f"unknown term {name!r} in {term.strip()!r} (terms: {', '.join(TERMS)})")
        key = name.replace("-", "_")
        if key in values:
            raise SelectorError(f"term {name!r} given twice")
        values[key] = _value(name, value)
    return Selector(**values, text=text.strip())


def _value(name: str, value: str) -> Any:
    if name == "sender" and value == "<>":
        return ""
    if not value:
        raise SelectorError(f"term {name!r} has no value")
    if name == "older-than":
        try:
            return parse_duration(value)
        except ValueError as err:
            raise SelectorError(f"term 'older-than': {err}") from None
    if name == "status":
        known = [str(s) for s in Status]
        if value.lower() not in known:
            raise SelectorError(f"term 'status': unknown status {value!r} (one of {', '.join(known)})")
    if name == "sender" and value.count("@") != 1:
        raise SelectorError(f"term {name!r}: {value!r} is not an address or @domain")
    return value.lower()


def from_json(where: object) -> Selector:
    """A selector given as JSON (the HTTP API): the text form, or an object {term: value}."""
    if isinstance(where, str):
        return parse_selector(where)
    if not isinstance(where, dict) or not where:
        raise SelectorError('where must be a selector string or an object such as {"destination": "example.com"}')
    terms = []
    for name, value in where.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SelectorError(f"term {name!r}: the value must be a string")
        if "," in str(value) or "," in str(name):
            raise SelectorError(f"term {name!r}: a value holds no comma")
        terms.append(f"{name}={value}")
    return parse_selector(",".join(terms))
