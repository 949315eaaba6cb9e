"""Who may use the HTTP API, and for what (issue 9, point 4).

Every request under /api/ carries a bearer token (RFC 6750) whose scopes cover what it asks:
``read`` for GET, ``submit`` for POST /api/messages, ``admin`` for the queue operations (admin
implies the others). ``GET /metrics`` needs ``metrics`` (implied by read and admin): the scope to
give a Prometheus server, which sends a bearer token as its scrape configuration's
``authorization`` says, and which should see the figures, not the mail. No separate open endpoint:
destination names and queue sizes are not for anyone who can reach the port; on loopback the rule
below lets a local Prometheus scrape without a token while none exists, as any API client.
Without a valid token: 401 with ``WWW-Authenticate: Bearer``; with a token whose scopes fall
short: 403.

One exception keeps `make run` and scripts on the same host working: a listener bound to loopback
serves token-less requests from its (loopback or `trusted_networks`) clients while no token exists
at all (the first `msgspool token create` ends it). A listener bound to any other address refuses
to start while no token exists (`check_exposure`).

Submissions follow the SMTP listener's relay rule (smtpd/policy.py): mail for a local domain is
taken from any caller allowed to submit; mail for anywhere else only from a token with the
``submit`` scope (an authenticated client) or, token-less, from a client in `trusted_networks` —
so ``trusted_networks = []`` means no token-less relaying over HTTP either (`relay_refusal`).

And, since a web page in the operator's browser can send requests to a listener on loopback
(carrying no token, so under the rule above), every request must also look like it came from the
API's own origin (`Browser`):
- the ``Host`` header names the listener — its address, a loopback name for a loopback listener,
  any IP literal for one on every interface, or a name in `http_hosts` — else 421 (DNS
  rebinding: a page of evil.example whose name now resolves to 127.0.0.1);
- an ``Origin`` header, when present, is the origin the request was sent to, and
  ``Sec-Fetch-Site`` is not ``cross-site``/``same-site``, else 403;
- a state-changing request (POST, PUT, PATCH, DELETE) declares ``Content-Type: application/json``,
  else 415: a page can send ``text/plain`` across origins without asking (a CORS "simple
  request"), never JSON.

The dashboard (web/dashboard.py) signs in a browser, which cannot send a bearer token with a page
load or an EventSource, by a cookie: POST /login checks a token and sets it as ``msgspool_session``
(HttpOnly, SameSite=Strict, RFC 6265bis), the same token, so its scopes, its revocation and the
API's answers are the token's. A request without an Authorization header is identified by that
cookie. Cookies travel with requests a browser makes on any page's behalf, so a state-changing
request signed in by cookie must also carry ``X-CSRF-Token``: the session's CSRF token (OWASP's
signed double-submit cookie), an HMAC of the session's secret that the login sets as the
``msgspool_csrf`` cookie, readable by the dashboard's script and by no other origin's; else 403.
A request with an Authorization header is not looked at for cookies: the API's bearer tokens work
as before.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from msgspool.domain.address import SMTP
from msgspool.domain.routing import Router
from msgspool.domain.tokens import ADMIN, METRICS, READ, SUBMIT, Token, matches, token_id_of
from msgspool.errors import MsgspoolError
from msgspool.ports import Credentials
from msgspool.smtpd.policy import Network, parse_networks
from msgspool.spooler.intake import Submission
from msgspool.web.problems import Handler, Problem

REALM = 'Bearer realm="msgspool"'
SESSION_COOKIE = "msgspool_session"
CSRF_COOKIE = "msgspool_csrf"
CSRF_HEADER = "X-CSRF-Token"


def csrf_token(secret: str) -> str:
    """The CSRF token of a session signed in with `secret`: only who knows the secret can make it."""
    return hmac.new(secret.encode("utf-8"), b"msgspool dashboard csrf", hashlib.sha256).hexdigest()


def check_csrf(request: web.Request, secret: str) -> None:
    """A state-changing request signed in by cookie carries the session's CSRF token (403 if not)."""
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), csrf_token(secret).encode()):
        raise Problem(403, f"{request.method} {request.path} signed in by the dashboard's cookie needs the"
                      f" {CSRF_HEADER} header (the {CSRF_COOKIE} cookie's value)", title="CSRF token missing or wrong")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) or a name: assume reachable from outside


async def check_exposure(store: Credentials, host: str, port: int) -> None:
    """Refuse an HTTP listener reachable from other hosts while no token could let anyone in."""
    if not is_loopback(host) and not await store.has_tokens():
        raise MsgspoolError(
            f"refusing to serve the HTTP API on {host or '*'}:{port}: it is not a loopback address and no"
            " token exists; create one first (msgspool token create --scope admin) or listen on 127.0.0.1")


def client_ip(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: a token, or nobody under the loopback rule (token None)."""

    token: Token | None
    trusted: bool  # the client address is in trusted_networks

    def allows(self, scope: str) -> bool:
        return self.token is None or self.token.allows(scope)

    @property
    def may_relay(self) -> bool:
        return self.token.allows(SUBMIT) if self.token else self.trusted

    @property
    def name(self) -> str:
        return self.token.name if self.token else ""


CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def needed_scope(request: web.Request) -> str:
    if request.path == "/metrics":
        return METRICS
    if request.method in ("GET", "HEAD"):
        return READ
    if request.path.rstrip("/") == "/api/messages":
        return SUBMIT
    return ADMIN


class Access:
    def __init__(self, store: Credentials, host: str, trusted_networks: Sequence[str]) -> None:
        self.store = store
        self.loopback = is_loopback(host)
        self.trusted: list[Network] = parse_networks(trusted_networks)

    def is_trusted(self, remote: str | None) -> bool:
        ip = client_ip(remote)
        return ip is not None and any(ip in net for net in self.trusted)

    @staticmethod
    def is_loopback_client(remote: str | None) -> bool:
        ip = client_ip(remote)
        return ip is not None and ip.is_loopback

    async def identify(self, request: web.Request) -> Caller:
        """The caller of a request; Problem 401 when it may not use the API at all."""
        trusted = self.is_trusted(request.remote)
        header = request.headers.get("Authorization")
        session = request.cookies.get(SESSION_COOKIE)
        if header is None and session:
            return Caller(await self.session(request, session), trusted)
        if header is None:
            local = trusted or self.is_loopback_client(request.remote)
            if self.loopback and local and not await self.store.has_tokens():
                return Caller(None, trusted)
            raise Problem(401, "this API needs a bearer token (Authorization: Bearer ...; see msgspool token)",
                          headers={"WWW-Authenticate": REALM})
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Problem(401, "the Authorization header must be: Bearer <token>",
                          headers={"WWW-Authenticate": f'{REALM}, error="invalid_request"'})
        return Caller(await self._token(secret.strip()), trusted)

    async def session(self, request: web.Request, secret: str) -> Token:
        """The token a dashboard session's cookie holds (401 when it no longer works: revoked)."""
        try:
            token = await self._token(secret)
        except Problem as err:
            raise Problem(401, "the dashboard session has ended (its token was revoked?): log in again at /login",
                          headers={"WWW-Authenticate": REALM}) from err
        if request.method in STATE_CHANGING:
            check_csrf(request, secret)
        return token

    async def check_secret(self, secret: str) -> Token:
        """The token of a secret given to the login page; Problem 401 when it is not one."""
        return await self._token(secret)

    async def _token(self, secret: str) -> Token:
        token_id = token_id_of(secret)
        found = await self.store.token(token_id) if token_id else None
        if found is None or not matches(secret, found[1]):
            raise Problem(401, "the token is not valid (unknown, revoked or mistyped)",
                          headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
        return found[0]


def relay_refusal(who: Caller, sub: Submission, router: Router) -> Problem | None:
    """A 403 when the submission has a non-local recipient that this caller may not relay to."""
    if who.may_relay:
        return None
    for i, address in enumerate(sub.recipients):
        addrtype = sub.addrtypes[i] if sub.addrtypes and i < len(sub.addrtypes) else SMTP
        if not router.is_local(address, addrtype):
            return Problem(403, f"554 5.7.1 <{address}>: Relay access denied (a token with the submit scope, or"
                           " a client in trusted_networks, may relay)", title="Relay access denied")
    return None


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def split_authority(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` or ``[v6]:port`` -> (lower-case host without brackets, port or None); None if
    malformed."""
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


class Browser:
    """The same-origin checks (see the module docstring) for a listener on host:port."""

    def __init__(self, host: str, port: int, extra_hosts: Sequence[str] = ()) -> None:
        self.host, self.port = host.strip("[]").lower(), port
        self.loopback = is_loopback(host)
        self.wildcard = self.host in ("", "0.0.0.0", "::")
        self.names = {h.strip("[]").lower() for h in extra_hosts}

    def host_allowed(self, host: str) -> bool:
        if host == self.host or host in self.names:
            return True
        ip = _ip(host)
        if self.loopback:
            return host in LOOPBACK_NAMES or (ip is not None and ip.is_loopback)
        return self.wildcard and ip is not None  # an IP literal cannot be rebound; a name can

    def check(self, request: web.Request) -> None:
        here = self._authority(request)
        origin = request.headers.get("Origin")
        if origin is not None and not self._same_origin(origin, here):
            raise Problem(403, f"cross-origin request refused: Origin {origin[:100]!r} is not {_show(here)}")
        site = request.headers.get("Sec-Fetch-Site", "").lower()
        if site in ("cross-site", "same-site"):
            raise Problem(403, f"cross-origin request refused: Sec-Fetch-Site is {site}")

    def _authority(self, request: web.Request) -> tuple[str, int | None]:
        """Where the request was sent to, by its Host header (the listener itself when there is none)."""
        header = request.headers.get("Host")
        if header is None:
            return self.host, self.port
        found = split_authority(header)
        if found is None or not self.host_allowed(found[0]):
            raise Problem(421, f"this listener does not answer for Host {header[:100]!r}; see http_hosts")
        return found

    @staticmethod
    def _same_origin(origin: str, here: tuple[str, int | None]) -> bool:
        """RFC 6454: scheme, host and port. The scheme is not ours to check (a proxy may end TLS), but
        a Host without a port means the default one of the scheme the page used."""
        try:
            parts = urlsplit(origin)
            default = {"http": 80, "https": 443}.get(parts.scheme)
            port = parts.port or default
        except ValueError:
            return False
        host, here_port = here
        return default is not None and (parts.hostname or "").lower() == host and port == (here_port or default)


def _show(authority: tuple[str, int | None]) -> str:
    host, port = authority
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def require_json(request: web.Request, types: Sequence[str] = ("application/json",)) -> None:
    """A state-changing request's body is of one of `types`: JSON, or (POST /api/messages) a raw
    message/rfc822, which a page cannot send across origins without asking either."""
    if request.method in STATE_CHANGING and request.content_type not in types:
        raise Problem(415, f"{request.method} needs Content-Type: {' or '.join(types)}, not"
                      f" {request.headers.get('Content-Type', 'none')!r}", headers={"Accept-Post": ", ".join(types)})


class Declared(Protocol):
    """What the route registry (web/routes.py) declares of a route that access needs."""

    @property
    def scope(self) -> str | None: ...

    @property
    def body_types(self) -> tuple[str, ...]: ...


def access_middleware(access: Access, browser: Browser,
                      declared: Callable[[web.Request], Declared | None] | None = None) -> Middleware:
    """The checks above; `declared` gives the route's own scope (None: no token needed, as for the
    OpenAPI document) and body types, else needed_scope and JSON."""
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # no such route (404, 405): nothing to guard
            return await handler(request)
        browser.check(request)
        route = declared(request) if declared is not None else None
        if route is not None and route.scope is None:
            request[CALLER] = Caller(None, access.is_trusted(request.remote))  # may do nothing that needs one
            return await handler(request)
        who = await access.identify(request)
        scope = route.scope if route is not None and route.scope else needed_scope(request)
        if not who.allows(scope):
            raise Problem(403, f"token {who.name!r} lacks the {scope!r} scope for {request.method} {request.path}",
                          headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'})
        require_json(request, route.body_types if route is not None else ("application/json",))
        request[CALLER] = who
        return await handler(request)

    return guard
