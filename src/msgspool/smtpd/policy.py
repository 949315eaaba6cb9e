"""SMTP listener policy: who may send what through msgspool (the trust boundary, made explicit).

- Mail for local domains is accepted from anyone (RFC 5321 §4.5.1: postmaster always).
- Mail for other domains is relayed only for clients in `trusted_networks` (default: loopback) or
  that authenticated; everyone else gets ``554 5.7.1 Relay access denied`` (Postfix's answer).
- Future release (RFC 4865 HOLDFOR/HOLDUNTIL, up to `future_release_max` seconds) is offered to
  the same clients that may relay: the extension is one of message submission (RFC 4865 §1, RFC
  6409), and an MTA handing us inbound mail has no business parking it in our queue.
- Connections from clients outside the trusted networks are counted (limits.py): over
  `smtpd_connection_limit` in all, or `smtpd_client_connection_limit` from one client address, a
  new session is greeted with ``421 4.7.0`` and closed. Such a client's MAIL and RCPT commands are
  also counted per minute (`smtpd_client_message_rate_limit`, `smtpd_client_recipient_rate_limit`);
  over the rate they get ``450 4.7.1``.
- AUTH (auth.py) is offered after TLS; an authenticated client may relay, and only with the
  envelope senders its account owns (domain/users.py; Postfix's reject_sender_login_mismatch):
  another sender is ``553 5.7.1``. A client locked out for failed logins is greeted with
  ``421 4.7.0`` unless it is trusted. On the submission listener (`submission_listen`, RFC
  6409) MAIL needs AUTH first, whoever the client: ``530 5.7.0 Authentication required``; the
  user is recorded in the message's history.
- After DATA the message gets its `Received:` trace header (RFC 5321 §4.4; the protocol name
  says whether the session was encrypted, a comment gives the TLS version and cipher) and goes through
  intake; the ``250`` is sent only once the spool has committed it durably; a spool without room
  for it answers ``452 4.3.1 Insufficient system storage`` (RFC 3463), and the client keeps it. So
  does MAIL, before any content is sent, when less than `queue_minfree` plus the declared SIZE is free. A release time
  becomes the message's `deliver_after`: its recipients are not due before it.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence

from msgspool.domain.ids import new_id
from msgspool.domain.outcome import Reply
from msgspool.domain.timefmt import rfc5322
from msgspool.domain.users import sender_allowed
from msgspool.errors import StorageFull, SubmitError
from msgspool.smtpd.auth import AUTH_NOT_ENABLED, Authenticator
from msgspool.smtpd.limits import ConnectionCounter, RateCounter
from msgspool.smtpd.protocol import Envelope, Session
from msgspool.spooler.intake import Intake, Submission

log = logging.getLogger("msgspool.smtpd")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


class SpoolPolicy:
    def __init__(self, intake: Intake, submit: Callable[[Submission], Awaitable[str]], *, hostname: str,
                 trusted_networks: Sequence[str], future_release_max: int = 0,
                 connections: ConnectionCounter | None = None, message_rate: RateCounter | None = None,
                 recipient_rate: RateCounter | None = None, authenticator: Authenticator | None = None,
                 submission: bool = False) -> None:
        self.intake, self.submit, self.hostname = intake, submit, hostname
        self.trusted = parse_networks(trusted_networks)
        self.future_release_max = future_release_max
        self.connections = connections or ConnectionCounter(0, 0, hostname)
        self.message_rate, self.recipient_rate = message_rate, recipient_rate
        self.authenticator, self.submission = authenticator, submission

    def for_submission(self) -> SpoolPolicy:
        """The same policy, counters and all, for the submission listener: MAIL needs AUTH."""
        policy = copy.copy(self)
        policy.submission = True
        return policy

    def connect(self, session: Session) -> Reply | None:
        try:
            ip = ipaddress.ip_address(session.peer[0])
        except ValueError:
            ip = None
        session.trusted = ip is not None and any(ip in net for net in self.trusted)
        if session.trusted:
            return None
        if self.authenticator is not None and self.authenticator.locked_out(session):
            log.warning("connect from [%s]: locked out after failed logins", session.peer[0])
            return Reply(421, "4.7.0", f"{self.hostname} Error: too many failed logins; try again later")
        refusal = self.connections.admit(str(session.peer[0]))
        if refusal is not None:
            log.warning("connect from [%s]: %s", session.peer[0], refusal.text)
            return refusal
        session.admitted = True
        return None

    def future_release(self, session: Session) -> int:
        return self.future_release_max if session.trusted or session.authenticated else 0

    def auth(self, session: Session) -> Reply | None:
        return AUTH_NOT_ENABLED if self.authenticator is None else self.authenticator.refusal(session)

    async def authenticate(self, session: Session, mechanism: str, authzid: str, user: str,
                           password: bytes) -> Reply:
        if self.authenticator is None:
            return AUTH_NOT_ENABLED
        return await self.authenticator.authenticate(session, mechanism, authzid, user, password)

    def mail(self, session: Session, envelope: Envelope, sender: str, params: dict[str, str]) -> Reply | None:
        if self.submission and not session.authenticated:
            return Reply(530, "5.7.0", "Authentication required")
        if session.authenticated and not sender_allowed(session.senders, sender):
            log.warning("[%s]: sender <%s> refused: not owned by %s", session.peer[0], sender, session.login)
            return Reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by user {session.login}")
        if self.message_rate is not None and not session.trusted and not self.message_rate.hit(str(session.peer[0])):
            log.warning("message rate limit exceeded from [%s]", session.peer[0])
            return Reply(450, "4.7.1", f"Error: too much mail from {session.peer[0]}")
        size = params.get("SIZE", "")
        refusal = self.intake.check_space(int(size) if size.isdigit() else 0)
        if refusal is not None:
            log.warning("from=<%s> [%s] size=%s: %s", sender, session.peer[0], size or "-", refusal.line())
        return refusal

    def rcpt(self, session: Session, envelope: Envelope, address: str, params: dict[str, str]) -> Reply | None:
        if (self.recipient_rate is not None and not session.trusted
                and not self.recipient_rate.hit(str(session.peer[0]))):
            log.warning("recipient rate limit exceeded from [%s]", session.peer[0])
            return Reply(450, "4.7.1", f"Error: too many recipients from {session.peer[0]}")
        if not self.intake.router.is_local(address) and not (session.trusted or session.authenticated):
            return Reply(554, "5.7.1", f"<{address}>: Relay access denied")
        return self.intake.check_recipient(address)

    async def data(self, session: Session, envelope: Envelope, content: bytes) -> Reply:
        queue_id = new_id()
        trace = self._received(session, envelope, queue_id)
        sub = Submission(sender=envelope.sender or "", recipients=list(envelope.recipients),
                         content=trace + content, origin="smtp", message_id=queue_id, dsn=envelope.dsn,
                         deliver_after=envelope.release_at,
                         recipient_dsn=envelope.rcpt_dsn if any(envelope.rcpt_dsn) else None)
        if session.login is not None:
            sub.meta["smtp_auth_user"] = session.login  # the history says who submitted it
        try:
            queue_id = await self.submit(sub)
        except SubmitError as err:
            return err.reply
        except StorageFull as err:  # nothing was stored: the client keeps the message and tries later
            log.warning("%s: from=<%s> [%s]: %s", queue_id, sub.sender, session.peer[0], err)
            return err.reply
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def disconnect(self, session: Session) -> None:
        if session.admitted:
            session.admitted = False
            self.connections.release(str(session.peer[0]))

    def _received(self, session: Session, envelope: Envelope, queue_id: str) -> bytes:
        # RFC 5321 §4.4, RFC 3848 and RFC 6531 §3.7.3 protocol names; the TLS version and cipher in a comment.
        with_ = ("UTF8SMTP" if envelope.smtputf8 else "ESMTP" if session.esmtp else "SMTP")
        if session.esmtp and session.tls is not None:
            with_ += "S"
        if session.esmtp and session.authenticated:
            with_ += "A"
        if session.tls is not None:
            with_ += f" ({session.tls[0]} {session.tls[1]})"
        ip = session.peer[0]
        for_ = f"\r\n\tfor <{envelope.recipients[0]}>" if len(envelope.recipients) == 1 else ""
        text = (f"Received: from {session.helo or 'unknown'} ([{ip}])\r\n\tby {self.hostname} (msgspool)"
                f" with {with_} id {queue_id}{for_};\r\n\t{rfc5322()}\r\n")
        return text.encode("utf-8", "surrogateescape")
