"""Who may use the HTTP API, and for what (issue 9, point 4).

Every request under /api/ carries a bearer token (RFC 6750) whose scopes cover what it asks:
``read`` for GET, ``submit`` for POST /api/messages, ``admin`` for the queue operations (admin
implies the others). Without a valid token: 401 with ``WWW-Authenticate: Bearer``; with a token
whose scopes fall short: 403.

One exception keeps `make run` and scripts on the same host working: a listener bound to loopback
serves token-less requests from clients in `trusted_networks` while no token exists at all (the
first `msgspool token create` ends it). A listener bound to any other address refuses to start
while no token exists (`check_exposure`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from msgspool.domain.tokens import ADMIN, READ, SUBMIT, Token, matches, token_id_of
from msgspool.errors import MsgspoolError
from msgspool.ports import Store
from msgspool.smtpd.policy import Network, parse_networks
from msgspool.web.problems import Handler, Problem

REALM = 'Bearer realm="msgspool"'


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) or a name: assume reachable from outside


async def check_exposure(store: Store, host: str, port: int) -> None:
    """Refuse an HTTP listener reachable from other hosts while no token could let anyone in."""
    if not is_loopback(host) and not await store.has_tokens():
        raise MsgspoolError(
            f"refusing to serve the HTTP API on {host or '*'}:{port}: it is not a loopback address and no"
            " token exists; create one first (msgspool token create --scope admin) or listen on 127.0.0.1")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: a token, or nobody under the loopback rule (token None)."""

    token: Token | None
    trusted: bool  # the client address is in trusted_networks

    def allows(self, scope: str) -> bool:
        return self.token is None or self.token.allows(scope)

    @property
    def name(self) -> str:
        return self.token.name if self.token else ""


CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def needed_scope(request: web.Request) -> str:
    if request.method in ("GET", "HEAD"):
        return READ
    if request.path.rstrip("/") == "/api/messages":
        return SUBMIT
    return ADMIN


class Access:
    def __init__(self, store: Store, host: str, trusted_networks: Sequence[str]) -> None:
        self.store = store
        self.loopback = is_loopback(host)
        self.trusted: list[Network] = parse_networks(trusted_networks)

    def is_trusted(self, remote: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)

    async def identify(self, request: web.Request) -> Caller:
        """The caller of a request; Problem 401 when it may not use the API at all."""
        trusted = self.is_trusted(request.remote)
        header = request.headers.get("Authorization")
        if header is None:
            if self.loopback and trusted and not await self.store.has_tokens():
                return Caller(None, trusted)
            raise Problem(401, "this API needs a bearer token (Authorization: Bearer ...; see msgspool token)",
                          headers={"WWW-Authenticate": REALM})
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Problem(401, "the Authorization header must be: Bearer <token>",
                          headers={"WWW-Authenticate": f'{REALM}, error="invalid_request"'})
        return Caller(await self._token(secret.strip()), trusted)

    async def _token(self, secret: str) -> Token:
        token_id = token_id_of(secret)
        found = await self.store.token(token_id) if token_id else None
        if found is None or not matches(secret, found[1]):
            raise Problem(401, "the token is not valid (unknown, revoked or mistyped)",
                          headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
        return found[0]


def access_middleware(access: Access) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # no such route (404, 405): nothing to guard
            return await handler(request)
        who = await access.identify(request)
        scope = needed_scope(request)
        if not who.allows(scope):
            raise Problem(403, f"token {who.name!r} lacks the {scope!r} scope for {request.method} {request.path}",
                          headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'})
        request[CALLER] = who
        return await handler(request)

    return guard
