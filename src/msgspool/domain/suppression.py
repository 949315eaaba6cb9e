"""The suppression list (Postal's): addresses mail is not sent to for a while, because a remote
told us they do not exist — a hard bounce — or because an operator said so. Pure rules; the store
keeps the list (ports.Suppressions), the scheduler decides what a hard bounce is (`hard_bounce`),
intake and the store refuse a suppressed recipient at submission (`refusal`).

A hard bounce is a permanent (5xx) reply of a remote about the recipient's address or mailbox
(RFC 3463 class 5.1.x, but not 5.1.7/5.1.8, which are about the sender; 5.2.0 and 5.2.1, a
disabled mailbox), or a plain 550/551/553 without an enhanced code. Not one: a local policy
failure (no route, an alias loop, a hook's reject, the cap on attempts, expiry), a mailbox that is
full (5.2.2), a message too big (5.2.3, 5.3.4), a policy refusal (5.7.x: spam, relay denied).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from msgspool.domain.outcome import Reply

BOUNCE, OPERATOR = "bounce", "operator"  # how an entry came to be
ADDRESS_STATUSES = {f"5.1.{n}" for n in (0, 1, 2, 3, 4, 5, 6, 9, 10)} | {"5.2.0", "5.2.1"}
PLAIN_CODES = {550, 551, 553}


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str  # as the key: `suppression_key`
    reason: str  # the remote's reply line, or the operator's words
    created_at: float
    until: float | None  # None: until removed
    source: str = BOUNCE  # bounce | operator
    message_id: str | None = None  # the message whose bounce put it here

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


def suppression_key(address: str) -> str:
    """Addresses are suppressed whatever their case (RFC 5321 lets a server fold the local part;
    a list that misses a bounce for `Bob@` after one for `bob@` is worse than one that folds)."""
    return address.strip().lower()


def hard_bounce(reply: Reply | None) -> bool:
    """Whether a permanent reply from a remote says the recipient's address is bad (see above)."""
    if reply is None or not reply.permanent:
        return False
    if reply.enhanced:
        return reply.enhanced in ADDRESS_STATUSES
    return reply.code in PLAIN_CODES


def refusal(entry: Suppression) -> Reply:
    """The reply a suppressed recipient gets at once: 550 5.1.1, with why and until when."""
    until = ("until removed" if entry.until is None
             else time.strftime("until %Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.until)))
    why = f"it bounced: {entry.reason}" if entry.source == BOUNCE else entry.reason
    return Reply(550, "5.1.1", f"<{entry.address}>: Recipient address suppressed {until} ({why})")
