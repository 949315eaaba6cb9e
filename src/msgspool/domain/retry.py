"""Retry policy: when a temporarily failed recipient is tried again, and when it gives up.

Per-message backoff follows Postfix (minimal_backoff_time 300 s, maximal_backoff_time 4000 s,
maximal_queue_lifetime 5 d), doubling per attempt, with a random spread (Exim's "H" rule, River's
±10 %) so a queue that failed together does not come back together. Destination health
(`destinations.py`) brings recipients forward the moment their destination answers again; this
policy is the safety net for message-level failures and for destinations that stay down.

Two limits end the retrying: the lifetime (`max_lifetime`, or the message's own `expires_at`:
status expired), counted from the later of submission and the release of a deferred message (a
message held for a week must not expire before its first attempt), and a cap on attempts
(`max_attempts`, or the message's own): when a temporary failure brings a recipient's attempts to
the cap it fails for good. Only attempts count — a recipient deferred without one because its
destination was down does not come nearer its cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    jitter: float = 0.1  # ± fraction of the delay
    max_attempts: int = 0  # the cap for messages that set none; 0 = no cap

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        base = min(self.max_backoff, self.min_backoff * (2.0 ** max(0, attempts - 1)))
        spread = (rng or _RNG).uniform(-self.jitter, self.jitter)
        return max(1.0, base * (1.0 + spread))

    def next_attempt(self, now: float, attempts: int, rng: random.Random | None = None) -> float:
        return now + self.delay(attempts, rng)

    def expired(self, submitted_at: float, now: float, expires_at: float | None = None,
                deliver_after: float | None = None) -> bool:
        """Past the message's own expiry time, or past the maximal lifetime."""
        return now >= self.give_up_at(submitted_at, expires_at, deliver_after)

    def give_up_at(self, submitted_at: float, expires_at: float | None = None,
                   deliver_after: float | None = None) -> float:
        """When retrying ends: the maximal lifetime after the message's release, or its own expiry
        time if that comes first (a delay notice's Will-Retry-Until, RFC 3464 §2.3.7)."""
        limit = max(submitted_at, deliver_after or submitted_at) + self.max_lifetime
        return limit if expires_at is None else min(expires_at, limit)

    def exhausted(self, attempts: int, cap: int | None = None) -> bool:
        """Whether `attempts` (the one just made included) reach the cap: the message's own when it
        set one (0: none), else this policy's."""
        limit = self.max_attempts if cap is None else cap
        return limit > 0 and attempts >= limit
