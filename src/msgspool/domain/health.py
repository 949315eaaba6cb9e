"""Destination health: stop hammering a destination that is down, and notice at once when it is back.

Postfix declares a destination dead after a failed cohort and then waits for the deferred queue's
next scan (minutes). msgspool instead probes a down destination on a short, growing interval with
jitter; the first probe that gets a greeting marks it up, and the caller then releases the whole
backlog that was waiting for it. Time is passed in, so this is pure logic.

    up --connection failure--> down --probe ok--> up (release backlog)
                                 |--probe fails--> down (next probe later, up to probe_max)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from msgspool.domain.outcome import Reply

_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    probe_min: float = 0.5
    probe_max: float = 3.0  # bounds the time from recovery to flowing backlog
    jitter: float = 0.2

    def interval(self, failures: int, rng: random.Random | None = None) -> float:
        base = min(self.probe_max, self.probe_min * (2.0 ** max(0, failures - 1)))
        return base * (1.0 + (rng or _RNG).uniform(-self.jitter, 0.0))


@dataclass(slots=True)
class DestinationHealth:
    name: str
    policy: ProbePolicy
    down: bool = False
    failures: int = 0
    down_since: float | None = None
    probe_at: float | None = None
    last_reply: Reply | None = None

    def connection_failed(self, now: float, reply: Reply) -> bool:
        """Record a connection-level failure; True when this marks the destination down."""
        was_down = self.down
        self.down = True
        self.failures += 1
        self.last_reply = reply
        if self.down_since is None:
            self.down_since = now
        self.probe_at = now + self.policy.interval(self.failures)
        return not was_down

    def connection_ok(self) -> bool:
        """Record a working session; True when this brings the destination back up."""
        was_down = self.down
        self.down = False
        self.failures = 0
        self.down_since = None
        self.probe_at = None
        return was_down

    def probe_due(self, now: float) -> bool:
        return self.down and self.probe_at is not None and now >= self.probe_at
