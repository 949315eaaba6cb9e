"""Webhooks, the pure part: which configured targets want an event, what body they are sent, and
how that body is signed. The dispatcher (spooler/webhooks.py) queues the POSTs and the `webhook`
transport (transports/webhook.py) sends them.

A target is one ``[[webhooks]]`` table of the settings:

    url      http:// or https:// URL that receives the POSTs; one target per URL
    secret   the key of the HMAC-SHA256 signature (never stored in the spool)
    types    the event types it wants (default: all)
    mailbox  only events of this mailbox (default: any)
    name     for logs and the X-Msgspool-Webhook header (default: the URL)

Signing follows Stripe's scheme: the signed payload is ``f"{t}.{body}"`` with ``t`` the Unix time of
the attempt in seconds, and the header is ``t=<t>,v1=<hex HMAC-SHA256(secret, payload)>``. A
receiver recomputes it over the raw body, compares in constant time (`hmac.compare_digest`) and
rejects a ``t`` too far from its own clock (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from msgspool.domain.address import mailbox_key
from msgspool.domain.events import Event, EventType

WEBHOOK = "WEBHOOK"  # the address type of a webhook delivery: the address is the URL
WEBHOOK_TRANSPORT = "webhook"  # the built-in transport's name, recorded in its deliveries' events
WEBHOOK_ORIGIN = "webhook"  # the origin of the queued messages that carry webhook POSTs
WEBHOOK_CLASS = "IPM.Webhook"  # their MAPI message class
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds a receiver should accept between `t` and its own clock
_KEYS = frozenset({"url", "secret", "types", "mailbox", "name"})


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    secret: str
    types: frozenset[EventType] | None = None  # None: every type
    mailbox: str = ""  # "": any mailbox
    name: str = ""

    def wants(self, event: Event) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        return not self.mailbox or event.mailbox == self.mailbox


def parse_targets(raw: Iterable[Mapping[str, Any]]) -> list[WebhookTarget]:
    """The targets of the `webhooks` setting; ValueError names the first bad one."""
    targets: list[WebhookTarget] = []
    for position, table in enumerate(raw, 1):
        target = _parse_target(table, position)
        if any(t.url == target.url for t in targets):
            raise ValueError(f"webhook {position}: url {target.url!r} is given twice (one webhook per URL)")
        targets.append(target)
    return targets


def _parse_target(table: Mapping[str, Any], position: int) -> WebhookTarget:
    where = f"webhook {position}"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table with url and secret")
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    url, secret = table.get("url"), table.get("secret")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ValueError(f"{where}: url must be an http:// or https:// URL, not {url!r}")
    if not isinstance(secret, str) or not secret:
        raise ValueError(f"{where} ({url}): secret must be a non-empty string")
    mailbox, name = table.get("mailbox", ""), table.get("name", "")
    if not isinstance(mailbox, str) or not isinstance(name, str):
        raise ValueError(f"{where} ({url}): mailbox and name must be strings")
    return WebhookTarget(url, secret, _parse_types(table.get("types"), where), mailbox_key(mailbox), name or url)


def _parse_types(types: Any, where: str) -> frozenset[EventType] | None:
    if types is None:
        return None
    known = {str(t) for t in EventType}
    if not isinstance(types, list) or not all(isinstance(t, str) and t in known for t in types):
        raise ValueError(f"{where}: types must be a list of event types ({', '.join(sorted(known))}), not {types!r}")
    return frozenset(EventType(t) for t in types) or None


def from_webhook(event: Event) -> bool:
    """Is this an event about a webhook delivery itself? Such events never trigger webhooks: a POST
    would be reported by a POST, forever. The store records the origin of a submission and the
    transport of every recipient outcome in the event's detail."""
    detail = event.detail
    return detail.get("origin") == WEBHOOK_ORIGIN or detail.get("transport") == WEBHOOK_TRANSPORT


def webhook_body(event: Event) -> bytes:
    """The POST body: the event as the SSE stream's `data:` shows it, compact JSON."""
    return json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` under `secret`."""
    return hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},{SIGNATURE_SCHEME}={sign(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """What a receiver does: True when `header` signs `body` under `secret` and is recent enough."""
    parts = [item.split("=", 1) for item in header.split(",") if "=" in item]
    stamps = [value for key, value in parts if key == "t"]
    candidates = [value for key, value in parts if key == SIGNATURE_SCHEME]
    if len(stamps) != 1 or not stamps[0].isdigit() or not candidates:
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
