"""Connection counting for the SMTP listeners: Postfix's anvil, kept in the listening process.

One `ConnectionCounter` is shared by every SMTP listener of the daemon. A session is admitted
only while fewer than `smtpd_connection_limit` sessions are open in all and fewer than
`smtpd_client_connection_limit` from its client address; otherwise it is greeted with
``421 4.7.0`` and closed before it costs more than the accept (RFC 5321 §3.1 allows a 421
greeting). A limit of 0 means no limit.

Clients in `trusted_networks` are neither limited nor counted, as Postfix exempts `$mynetworks`
by default (`smtpd_client_event_limit_exceptions`): the local applications that submit through
the loopback listener open many connections at once by design, and a flood from outside, which
fills the total, must not lock them out. The total bounds what outsiders can hold open (and so
the descriptors they can take); the descriptor limit is raised at start to leave room for the rest.

`RateCounter` limits what one client may ask for per minute: MAIL commands
(`smtpd_client_message_rate_limit`) and RCPT commands (`smtpd_client_recipient_rate_limit`),
Postfix's anvil rates, with the same exemption for trusted networks. Over the limit the command
gets ``450 4.7.1``: a legitimate sender retries later, a flood gets nothing stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from msgspool.domain.outcome import Reply


class ConnectionCounter:
    """Open sessions, in all and per client address."""

    def __init__(self, total_limit: int, client_limit: int, hostname: str = "localhost") -> None:
        self.total_limit, self.client_limit, self.hostname = total_limit, client_limit, hostname
        self.total = 0
        self.per_client: Counter[str] = Counter()

    def admit(self, client: str) -> Reply | None:
        """Count a new session from `client`; or the 421 that refuses it (then nothing is counted)."""
        if self.total_limit and self.total >= self.total_limit:
            return Reply(421, "4.7.0", f"{self.hostname} Error: too many connections")
        if self.client_limit and self.per_client[client] >= self.client_limit:
            return Reply(421, "4.7.0", f"{self.hostname} Error: too many connections from {client}")
        self.total += 1
        self.per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        """A session admitted by `admit` has ended."""
        self.total -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


RATE_WINDOW = 60.0  # seconds: the rate limits count per minute (Postfix's anvil_rate_time_unit)


class RateCounter:
    """Requests per client address in fixed windows of `window` seconds (anvil's rates): MAIL
    commands for the message rate, RCPT commands for the recipient rate, counted whether or not
    they are accepted. `clock` is injected so that the window is testable without waiting."""

    def __init__(self, limit: int, clock: Callable[[], float], window: float = RATE_WINDOW,
                 sweep_at: int = 10_000) -> None:
        self.limit, self.clock, self.window = limit, clock, window
        self.counts: dict[str, tuple[float, int]] = {}  # client -> (window start, requests in it)
        self.sweep_at = self._sweep_at = sweep_at  # clients remembered before the expired ones are forgotten

    def hit(self, client: str) -> bool:
        """Count one request from `client`; False when it is over the limit in this window."""
        if not self.limit:
            return True
        now = self.clock()
        start, count = self.counts.get(client, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self.counts[client] = (start, count + 1)
        if len(self.counts) > self._sweep_at:
            self.counts = {c: v for c, v in self.counts.items() if now - v[0] < self.window}
            self._sweep_at = max(self.sweep_at, 2 * len(self.counts))  # each sweep pays for many hits
        return count < self.limit


class AuthFailures:
    """Failed logins per client address (RFC 4954 §14 asks servers to slow guessing down): each
    failure in a window of `window` seconds makes the next 535 wait longer (`delay` seconds times
    the failures so far), and the `limit`-th locks the client out for `window` seconds: its AUTH,
    and its new sessions unless it is trusted, get ``421 4.7.0``. Success does not clear the
    count, so one known account cannot launder guesses at another. A limit of 0 means no lockout."""

    def __init__(self, limit: int, window: float, delay: float, clock: Callable[[], float],
                 sweep_at: int = 10_000) -> None:
        self.limit, self.window, self.delay, self.clock = limit, window, delay, clock
        self.failures: dict[str, tuple[float, int]] = {}  # client -> (first failure of the window, count)
        self.locked: dict[str, float] = {}  # client -> locked until
        self.sweep_at = sweep_at

    def locked_out(self, client: str) -> bool:
        until = self.locked.get(client)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self.locked[client]
        return False

    def fail(self, client: str) -> float:
        """Count one failed login; the seconds to wait before answering it."""
        now = self.clock()
        start, count = self.failures.get(client, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        self.failures[client] = (start, count)
        if self.limit and count >= self.limit:
            self.locked[client] = now + self.window
            del self.failures[client]
        if len(self.failures) > self.sweep_at:
            self.failures = {c: v for c, v in self.failures.items() if now - v[0] < self.window}
            self.locked = {c: t for c, t in self.locked.items() if now < t}
        return self.delay * count
