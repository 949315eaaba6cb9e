"""The webhook transport: POSTs a queued event to its webhook (address type "WEBHOOK").

The spooler adds it by itself, right after `smtp`, when the `webhooks` setting is not empty; the
dispatcher (spooler/webhooks.py) queues one message per event and webhook, whose recipient address
is the URL and whose content is the JSON body. Delivery is the `http` transport's: the reply
mapping (2xx delivered; 408, 429, 5xx deferred with backoff; other 4xx failed), one destination per
URL origin (a receiver that does not answer is marked down, probed, and its backlog released when
it answers), and one shared client session. The request:

    POST <url>
    Content-Type: application/json
    X-Msgspool-Event: new_mail                       the event type
    X-Msgspool-Event-Id: 1234                        the event id (as in the SSE stream)
    X-Msgspool-Delivery: 0JXQ8B1T6ZK4M7P2RD          the queue id: the same on every retry
    X-Msgspool-Webhook: app                          the webhook's name
    X-Msgspool-Signature: t=1767225600,v1=5257a8...  Stripe's scheme, see below

    {"folder":"inbox","id":1234,"mailbox":"you@localhost","message_id":"...","type":"new_mail",...}

Verifying it (Python; `body` is the raw request body, `secret` the webhook's)::

    fields = dict(item.split("=", 1) for item in request.headers["X-Msgspool-Signature"].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300

`t` is the time of the attempt, so a retry carries a fresh signature; deduplicate by
X-Msgspool-Delivery. The secret comes from the settings when the POST is made: the spool stores
none. A queued delivery whose URL is no longer configured fails (550 5.7.0), never goes unsigned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.domain.webhooks import WEBHOOK, WebhookTarget, signature_header
from msgspool.transports.http import HTTPConnection, HTTPTransport

USER_AGENT = "msgspool-webhook"
NOT_CONFIGURED = Reply(550, "5.7.0", "no webhook is configured for this URL any more")


def _event_fields(body: bytes) -> tuple[str, str]:
    """The event type and id, for the headers; a body that is not ours gets empty ones, not a crash."""
    try:
        event = json.loads(body)
        return str(event.get("type", "")), str(event.get("id", ""))
    except (ValueError, AttributeError):
        return "", ""


class WebhookConnection(HTTPConnection):
    def __init__(self, session: aiohttp.ClientSession, origin: str, headers: dict[str, str],
                 targets: dict[str, WebhookTarget], clock: Callable[[], float]) -> None:
        super().__init__(session, origin, headers)
        self.targets, self.clock = targets, clock

    async def send_one(self, message: Message, recipient: Recipient) -> Reply:
        if recipient.address not in self.targets:
            return NOT_CONFIGURED
        return await super().send_one(message, recipient)

    def request(self, message: Message, recipient: Recipient) -> tuple[bytes, dict[str, str]]:
        target, body = self.targets[recipient.address], message.content
        event_type, event_id = _event_fields(body)
        return body, {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                      "X-Msgspool-Event": event_type, "X-Msgspool-Event-Id": event_id,
                      "X-Msgspool-Delivery": message.id, "X-Msgspool-Webhook": target.name,
                      "X-Msgspool-Signature": signature_header(target.secret, int(self.clock()), body)}


class WebhookTransport(HTTPTransport):
    addrtypes = frozenset({WEBHOOK})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        super().__init__(name, settings, options)
        self.targets = {t.url: t for t in settings.webhook_targets}
        self.clock: Callable[[], float] = time.time

    def connection(self, session: aiohttp.ClientSession, origin: str) -> HTTPConnection:
        return WebhookConnection(session, origin, self.headers, self.targets, self.clock)
