"""The SMTP transport: internet mail to a smarthost (`relay`) or to each domain's MX hosts.

Address type "SMTP". With a relay every recipient's nexthop is the relay, so all of them share its
connections; without one the nexthop is the recipient's domain and `connect` looks up its MX
hosts with the transport's resolver (RFC 5321 §5.1): MX records by preference, equal preferences
in random order; no MX record (NODATA) -> the domain itself, the implicit MX; no such domain
(NXDOMAIN) -> failed 5.1.2; a null MX (RFC 7505) -> failed 5.1.10. Each MX host's A, then AAAA,
addresses are tried in turn, the next on a refused or timed-out connection or a 4xx/5xx greeting
or EHLO, then the next MX host, at most `mx_address_limit` addresses per attempt (Postfix's
smtp_mx_address_limit); when none completes a session the destination is down (never a bounce:
another attempt may find a host). MX hosts with no address at all fail 5.4.4 (4.4.3 when a lookup
failed only for now). Recipients a session leaves with a 4xx, or all of them when it is lost, go on
to the next MX address in the same attempt, up to `mx_session_limit` sessions per message
(Postfix's smtp_mx_session_limit). An MX address that is one of this msgspool's own SMTP listeners
(on the transport's port) is never delivered to, nor any MX of equal or worse preference (RFC 5321
§5.1): when it is the best, the mail fails 5.4.6 (a loop), else it defers 4.4.4 (no primary).

Options (from a [[transports]] table): relay (``HOST:PORT``, or ``smtps://HOST:PORT`` for implicit
TLS), helo_name, port (default 25), tls_security_level and tls_ca_file (default the settings'
smtp_tls_security_level and smtp_tls_ca_file), user and password_file (smarthost AUTH; a transport
that takes the settings' relay takes relay_user and relay_password_file with it), mta_sts (default
smtp_mta_sts: MX delivery honours RFC 8461 policies, mta_sts.py), nameserver (HOST[:PORT] for the MX,
MTA-STS, MX address and policy host lookups; default the system's resolver), mx_address_limit
(default smtp_mx_address_limit), mx_session_limit (default smtp_mx_session_limit), and the timeouts
of config.py. The
security policy itself is smtp_security.py's.

A connection's `remote` names the TLS version it used and the account, e.g.
``smtp.example.org[192.0.2.1]:587 tls=TLSv1.3 user=app``: the recipient's status (``queue show``),
its history and the delivery's log line carry it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from msgspool.domain.address import SMTP, domain_of
from msgspool.domain.dsn import Handoff, RecipientDSN, mail_params, rcpt_params
from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.errors import ConfigError, DestinationUnavailable
from msgspool.transports.mta_sts import MTASTS
from msgspool.transports.smtp_client import ClientTimeouts, SMTPClient, SMTPConnectionError, ascii_envelope
from msgspool.transports.smtp_security import (
    Credentials,
    SessionSecurity,
    TLSLevel,
    client_context,
    split_scheme,
)

log = logging.getLogger("msgspool.smtp")


def split_hostport(value: str, default_port: int = 25) -> tuple[str, int]:
    """``host:port``, ``[host]:port``, ``[::1]:25`` or ``host`` -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port


class SMTPConnection:
    """One SMTP session, reused for several messages. For MX delivery it keeps the destination's
    other addresses: recipients a transaction leaves with a 4xx (or all of them, when the session is
    lost) go to the next MX address at once, in a new session, up to `session_limit` sessions per
    message (Postfix's smtp_mx_session_limit); the connection goes on with the last session."""

    def __init__(self, client: SMTPClient, note: str = "", candidates: MXCandidates | None = None,
                 session_limit: int = 1) -> None:
        self.note, self.candidates, self.session_limit = note, candidates, session_limit
        self._use(client)
        self.remotes: list[str] = []  # per recipient of the last MX send: the session that answered (empty: `remote`)

    def _use(self, client: SMTPClient) -> None:
        self.client = client
        self.remote = client.remote
        if client.tls is not None:
            self.remote += f" tls={client.tls[0]}"
        if client.user is not None:
            self.remote += f" user={client.user}"
        self.remote += self.note  # e.g. " mta-sts=enforce"

    @property
    def usable(self) -> bool:
        return self.client.usable

    @property
    def handoff(self) -> Handoff:
        """A next hop that advertises DSN reports success itself; to one that does not, msgspool
        reports `relayed` (RFC 3461 §5.2.2)."""
        return Handoff.DSN_RELAY if "DSN" in self.client.extensions else Handoff.RELAY

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        if self.candidates is None:  # a relay: one session, the hot path of relaying
            return await self._transaction(message, recipients)
        replies: list[Reply | None] = [None] * len(recipients)
        self.remotes = [self.remote] * len(recipients)
        pending, sessions = list(range(len(recipients))), 1
        while True:
            try:
                got = await self._transaction(message, [recipients[i] for i in pending])
            except DestinationUnavailable as err:
                if not (self._may_fall_back(sessions) and await self._next_session()):
                    if all(r is None for r in replies):
                        raise  # nothing is known of any recipient: the destination's health decides
                    return [err.reply if r is None else r for r in replies]
                sessions += 1
                continue
            for i, reply in zip(pending, got, strict=True):
                replies[i], self.remotes[i] = reply, self.remote
            pending = [i for i, reply in zip(pending, got, strict=True) if reply.temporary]
            if not (pending and self._may_fall_back(sessions) and await self._next_session()):
                return [r for r in replies if r is not None]
            sessions += 1

    def _may_fall_back(self, sessions: int) -> bool:
        return self.candidates is not None and (self.session_limit == 0 or sessions < self.session_limit)

    async def _transaction(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        mail_params, rcpt_params = self._dsn_params(message, recipients)
        try:
            result = await self.client.send(message.sender, [r.address for r in recipients], message.full_content(),
                                            mail_params=mail_params, rcpt_params=rcpt_params)
        except SMTPConnectionError as err:
            raise DestinationUnavailable(err.reply) from err
        return result.outcomes()

    async def _next_session(self) -> bool:
        """Move to a session with the destination's next MX address; False when none is left."""
        if self.candidates is None or not self.candidates.remaining:
            return False
        try:
            client = await self.candidates.next_session()
        except DestinationUnavailable:
            return False
        log.info("%s: going on with the next MX, %s", self.candidates.nexthop, client.remote)
        await self.client.quit()
        self._use(client)
        return True

    def _dsn_params(self, message: Message,
                    recipients: Sequence[Recipient]) -> tuple[list[str], list[list[str]] | None]:
        """RFC 3461 §5.2: to a next hop that advertises DSN, the requests go along (with an ORCPT
        naming the address as received, when the client gave none); to one that does not, nothing."""
        if "DSN" not in self.client.extensions or (message.dsn is None and not any(r.dsn for r in recipients)):
            return [], None
        # RFC 6533 §3: an ORCPT in raw UTF-8 only in a transaction that uses SMTPUTF8, which the
        # client declares for a non-ASCII envelope; otherwise its xtext-encoded form.
        addresses = [r.address for r in recipients]
        smtputf8 = "SMTPUTF8" in self.client.extensions and not ascii_envelope(message.sender, addresses)
        return (mail_params(message.dsn) if message.dsn else [],
                [rcpt_params(r.dsn or RecipientDSN(), r.address, smtputf8=smtputf8) for r in recipients])

    async def close(self) -> None:
        await self.client.quit()


class MXCandidates:
    """The addresses of one destination still to try, in order: `connect` takes the first that
    completes a session, a connection's fallback the next (RFC 5321 §5.1)."""

    def __init__(self, transport: SMTPTransport, nexthop: str, candidates: list[tuple[str, str | None]], port: int,
                 security: SessionSecurity) -> None:
        self.transport, self.nexthop, self.port, self.security = transport, nexthop, port, security
        self.remaining = list(candidates)
        self.tried: list[str] = []
        self.last: Reply | None = None

    async def next_session(self) -> SMTPClient:
        """A session with the next address that completes one; DestinationUnavailable, naming
        every host tried, when none is left."""
        t = self.transport
        while self.remaining:
            host, address = self.remaining.pop(0)
            try:
                return await SMTPClient.connect(host, self.port, helo_name=t.helo_name, timeouts=t.timeouts,
                                                security=self.security, address=address)
            except SMTPConnectionError as err:
                self.last = err.reply
                self.tried.append(f"{host}[{address}]:{self.port}" if address else f"{host}:{self.port}")
                if self.remaining:
                    log.info("%s: %s: %s; trying the next one", self.nexthop, self.tried[-1], err.reply.line())
        raise DestinationUnavailable(_none_answered(self.nexthop, self.tried, self.last))


class SMTPTransport:
    addrtypes = frozenset({SMTP})
    # Its hard bounces come from other organisations' servers: they list the address on the
    # suppression list (scheduler._settle_remote). A local one's (LMTP's 550 5.1.1 for a user not
    # made yet, a pipe's EX_NOUSER) must not keep that user's mail away for suppression_time.
    bounces_suppress = True

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        own_relay = "relay" in options
        relay, implicit_tls = split_scheme(options.get("relay", getattr(settings, "relay", "")) or "")
        self.relay = relay
        self.port = int(options.get("port", 465 if implicit_tls else 25))
        self.domains: tuple[str, ...] = tuple(options.get("domains", ()))
        self.helo_name: str = options.get("helo_name") or settings.host_name
        self.timeouts = ClientTimeouts(
            connect=settings.smtp_connect_timeout, greeting=settings.smtp_greeting_timeout,
            helo=settings.smtp_greeting_timeout, mail=settings.smtp_mail_timeout,
            rcpt=settings.smtp_rcpt_timeout, data_init=settings.smtp_data_init_timeout,
            data_block=settings.smtp_data_block_timeout, data_done=settings.smtp_data_done_timeout)
        self.security = _security(name, settings, options, implicit_tls, inherit_credentials=not own_relay)
        if self.security.credentials is not None and not self.relay:
            raise ConfigError(f"transport {name}: a user and password are for a relay, and it has none")
        self.nameserver: str = options.get("nameserver", "")
        self.mx_address_limit = int(options.get("mx_address_limit", getattr(settings, "smtp_mx_address_limit", 5)))
        # RFC 5321 §5.1: an MX that is this host itself is never delivered to (mail would loop).
        self.own_listeners = [split_hostport(value, 25) for value in (
            getattr(settings, "smtp_listen", ""), getattr(settings, "smtps_listen", ""),
            getattr(settings, "submission_listen", "")) if value]
        self.mx_session_limit = int(options.get("mx_session_limit", getattr(settings, "smtp_mx_session_limit", 2)))
        self._resolver: Any = None
        self._mta_sts: MTASTS | None = None
        self._sts_security: SessionSecurity | None = None
        if not self.relay and options.get("mta_sts", getattr(settings, "smtp_mta_sts", False)):
            # An enforced policy means verify, whatever the configured level (RFC 8461 §5).
            ca_file = options.get("tls_ca_file", getattr(settings, "smtp_tls_ca_file", ""))
            verify = client_context(TLSLevel.VERIFY, ca_file)
            assert verify is not None
            self._sts_security = replace(self.security, level=TLSLevel.VERIFY, context=verify)
            self._mta_sts_context = verify
            self._mta_sts_timeout = float(settings.smtp_connect_timeout)

    def check(self) -> None:
        """What can only be checked where the daemon runs: that its relay password is readable."""
        if self.security.credentials is not None:
            self.security.credentials.check(f"transport {self.name}")

    def nexthop(self, address: str) -> str:
        return self.relay or domain_of(address)

    async def connect(self, nexthop: str) -> SMTPConnection:
        """A session with the relay, or with the first MX address that completes one (RFC 5321
        §5.1): a host that refuses, times out, or greets or answers EHLO with 4xx/5xx is passed over
        for the next address, then the next MX host, up to `mx_address_limit` addresses. The MX
        addresses not tried yet stay with the connection for its fallback (`mx_session_limit`)."""
        security, note = self.security, ""
        if self.relay:
            host, port = split_hostport(nexthop, self.port)
            candidates = MXCandidates(self, nexthop, [(host, None)], port, security)
            try:
                return SMTPConnection(await candidates.next_session(), note)
            except DestinationUnavailable as err:
                if candidates.last is not None:
                    raise DestinationUnavailable(candidates.last) from err  # the relay's own word: a 5xx bounces
                raise
        records = await self._mx_records(nexthop)
        security, hosts, note = await self._apply_mta_sts(nexthop, [host for _, host in records])
        records = [(preference, host) for preference, host in records if host in hosts]
        candidates = MXCandidates(self, nexthop, await self._mx_addresses(nexthop, records), self.port, security)
        return SMTPConnection(await candidates.next_session(), note, candidates, self.mx_session_limit)

    async def _apply_mta_sts(self, domain: str, hosts: list[str]) -> tuple[SessionSecurity, list[str], str]:
        """RFC 8461 §5: in `enforce` mode only the MX hosts the policy names, each with a verified
        certificate; in `testing` mode as without a policy, mismatches logged."""
        if self._sts_security is None or domain.startswith("["):
            return self.security, hosts, ""
        policy = await self._policies().policy(domain)
        if policy is None or policy.mode == "none":
            return self.security, hosts, ""
        allowed = [host for host in hosts if policy.allows(host)]
        if policy.mode == "testing":
            if len(allowed) < len(hosts):
                log.warning("MTA-STS (testing) of %s: MX %s not in its policy", domain,
                            ", ".join(host for host in hosts if not policy.allows(host)))
            return self.security, hosts, " mta-sts=testing"
        security = replace(self._sts_security, required_by=f"MTA-STS policy of {domain}")
        if not allowed:
            raise DestinationUnavailable(Reply(451, "4.7.5", f"MTA-STS policy of {domain} (enforce) allows none"
                                               f" of its MX hosts ({', '.join(hosts)})"))
        return security, allowed, " mta-sts=enforce"

    def _dns(self) -> Any:
        import dns.asyncresolver

        if self._resolver is None:
            if self.nameserver:
                host, port = split_hostport(self.nameserver, 53)
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers, self._resolver.port = [host], port
            else:
                self._resolver = dns.asyncresolver.Resolver()
        return self._resolver

    def _policies(self) -> MTASTS:
        if self._mta_sts is None:
            self._mta_sts = MTASTS(self._dns(), self._mta_sts_context, self._mta_sts_timeout,
                                   http_via_resolver=bool(self.nameserver))
        return self._mta_sts

    async def _mx_hosts(self, domain: str) -> list[str]:
        return [host for _, host in await self._mx_records(domain)]

    async def _mx_records(self, domain: str) -> list[tuple[int, str]]:
        """The domain's mail exchangers (preference, host), best first (RFC 5321 §5.1): MX records
        by preference, those of equal preference shuffled; no MX record (NODATA) -> the domain
        itself, the implicit MX; no such domain (NXDOMAIN) -> 550 5.1.2; a null MX (RFC 7505 §3:
        one record, ".") -> 556 5.1.10."""
        import dns.exception
        import dns.resolver

        if domain.startswith("[") and domain.endswith("]"):  # an address literal: no MX lookup
            return [(0, domain[1:-1].removeprefix("IPv6:"))]
        try:
            answer = await self._dns().resolve(domain, "MX")
        except dns.resolver.NXDOMAIN as err:
            raise DestinationUnavailable(Reply(550, "5.1.2", f"domain {domain} does not exist")) from err
        except dns.resolver.NoAnswer:
            return [(0, domain)]  # RFC 5321 §5.1: the implicit MX
        except dns.exception.DNSException as err:
            raise DestinationUnavailable(Reply(451, "4.4.3", f"MX lookup for {domain} failed: {err}")) from err
        records = sorted(((r.preference, str(r.exchange).rstrip(".")) for r in answer),
                         key=lambda record: (record[0], random.random()))
        if any(host == "" for _, host in records):  # RFC 7505 §3: a null MX; §4.3: among others still one
            raise DestinationUnavailable(Reply(556, "5.1.10", f"{domain} accepts no mail (null MX)"))
        return records

    async def _mx_addresses(self, domain: str, records: list[tuple[int, str]]) -> list[tuple[str, str | None]]:
        """(host, address) to try, in order: each MX host's IPv4 then IPv6 addresses as the DNS
        gives them, at most `mx_address_limit` in all. An MX host without an address is passed over
        (Postfix does so too); when none has one the mail fails 5.4.4, unless a lookup failed only
        for now (4.4.3). An MX address that is this msgspool's own SMTP listener ends the list
        before its preference (RFC 5321 §5.1): mail to it would loop."""
        candidates: list[tuple[int, str, str]] = []
        temporary: Reply | None = None
        for preference, host in records:
            addresses, error = await self._addresses(host)
            temporary = temporary or error
            own = next((a for a in addresses if self._is_own_listener(a)), None)
            if own is not None:
                candidates = [c for c in candidates if c[0] < preference]
                if not candidates:
                    raise DestinationUnavailable(self._loop_reply(domain, host, own, records[0][0] == preference))
                break
            candidates.extend((preference, host, address) for address in addresses)
            if self.mx_address_limit and len(candidates) >= self.mx_address_limit:
                break
        found: list[tuple[str, str | None]] = [(host, address) for _, host, address in candidates]
        if found:
            return found[:self.mx_address_limit] if self.mx_address_limit else found
        if temporary is not None:
            raise DestinationUnavailable(temporary)
        hosts = [host for _, host in records]
        if hosts == [domain]:
            raise DestinationUnavailable(Reply(554, "5.4.4", f"{domain} has no MX and no address record"))
        raise DestinationUnavailable(Reply(554, "5.4.4", f"no MX host of {domain} ({', '.join(hosts)}) has an"
                                           " address record (A or AAAA)"))

    def _is_own_listener(self, address: str) -> bool:
        """Whether `address` on the transport's port is one of this msgspool's SMTP listeners (a
        wildcard listener counts for loopback addresses; its other interfaces are not known here)."""
        ip = ipaddress.ip_address(address)
        for host, port in self.own_listeners:
            if port != self.port:
                continue
            if host in ("", "0.0.0.0", "::", "localhost") and ip.is_loopback:
                return True
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(host) == ip:
                    return True
        return False

    def _loop_reply(self, domain: str, host: str, address: str, best: bool) -> Reply:
        """Postfix's words: the best MX is this host -> a loop (bounce); only a worse one is, and the
        better ones have no usable address -> no primary relay for now (defer)."""
        where = f"{host}[{address}]:{self.port} is this msgspool's SMTP listener"
        if best:
            return Reply(554, "5.4.6", f"mail for {domain} loops back to myself ({where})")
        return Reply(451, "4.4.4", f"unable to find a primary relay for {domain} ({where}, and no better MX"
                                   " host has an address)")

    async def _addresses(self, host: str) -> tuple[list[str], Reply | None]:
        """A host's A and AAAA addresses, looked up by the transport's resolver; a temporary
        failure of either lookup as a reply. An IP address is its own (Postfix takes a numeric MX)."""
        import dns.exception
        import dns.resolver

        try:
            ipaddress.ip_address(host)
            return [host], None
        except ValueError:
            pass
        found: list[str] = []
        error: Reply | None = None
        for rtype in ("A", "AAAA"):
            try:
                answer = await self._dns().resolve(host, rtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as err:
                error = error or Reply(451, "4.4.3", f"address lookup of {host} failed: {err}")
                continue
            found.extend(str(r.address) for r in answer)
        return found, error

    async def close(self) -> None:
        return None


def _none_answered(nexthop: str, tried: list[str], last: Reply | None) -> Reply:
    """Why no MX session could be set up: the last host's reply, naming every host tried. Never
    permanent: a 5xx greeting is one host's word, and the next attempt may find another (Postfix's
    smtp_skip_5xx_greeting)."""
    if last is None:
        return Reply(451, "4.4.4", f"no host to connect to for {nexthop}")
    if len(tried) <= 1:
        return last if last.temporary else Reply(451, "4.4.0", last.line())
    enhanced = last.enhanced if last.temporary else "4.4.0"
    return Reply(421 if last.temporary else 451, enhanced,
                 f"no host for {nexthop} answered; tried {', '.join(tried)}; the last said: {last.line()}")


def _security(name: str, settings: Any, options: dict[str, Any], implicit_tls: bool, *,
              inherit_credentials: bool) -> SessionSecurity:
    """The transport's TLS and AUTH policy from its options, falling back to the settings."""
    source = f"transport {name}"
    level = TLSLevel.parse(options.get("tls_security_level", getattr(settings, "smtp_tls_security_level", "may")),
                           source)
    ca_file = options.get("tls_ca_file", getattr(settings, "smtp_tls_ca_file", ""))
    if inherit_credentials:
        user = options.get("user", getattr(settings, "relay_user", ""))
        password_file = options.get("password_file", getattr(settings, "relay_password_file", ""))
    else:
        user, password_file = options.get("user", ""), options.get("password_file", "")
    return SessionSecurity(
        level=level, context=client_context(level, ca_file, implicit_tls=implicit_tls), implicit_tls=implicit_tls,
        credentials=Credentials.configured(user, password_file, source),
        auth_without_tls=bool(getattr(settings, "smtp_auth_without_tls", False)),
        auth_soft_bounce=bool(getattr(settings, "smtp_auth_soft_bounce", True)))
