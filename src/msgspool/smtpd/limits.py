"""Connection counting for the SMTP listeners: Postfix's anvil, kept in the listening process.

One `ConnectionCounter` is shared by every SMTP listener of the daemon. A session is admitted
only while fewer than `smtpd_connection_limit` sessions are open in all and fewer than
`smtpd_client_connection_limit` from its client address; otherwise it is greeted with
``421 4.7.0`` and closed before it costs more than the accept (RFC 5321 §3.1 allows a 421
greeting). Clients in `trusted_networks` are exempt from the per-client limit, as Postfix exempts
`$mynetworks` by default (`smtpd_client_event_limit_exceptions`): the local applications that
submit through the loopback listener open many connections at once by design. The total limit
holds for everyone, so that hostile clients cannot use up the process's file descriptors.
A limit of 0 means no limit.
"""

from __future__ import annotations

from collections import Counter

from msgspool.domain.outcome import Reply


class ConnectionCounter:
    """Open sessions, in all and per client address."""

    def __init__(self, total_limit: int, client_limit: int, hostname: str = "localhost") -> None:
        self.total_limit, self.client_limit, self.hostname = total_limit, client_limit, hostname
        self.total = 0
        self.per_client: Counter[str] = Counter()

    def admit(self, client: str, *, exempt: bool = False) -> Reply | None:
        """Count a new session from `client`; or the 421 that refuses it (then nothing is counted)."""
        if self.total_limit and self.total >= self.total_limit:
            return Reply(421, "4.7.0", f"{self.hostname} Error: too many connections")
        if not exempt and self.client_limit and self.per_client[client] >= self.client_limit:
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
