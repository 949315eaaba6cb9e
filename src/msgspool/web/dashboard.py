"""The dashboard served at / by `msgspool serve` (issue 13, item 4): a small vanilla-JS page over
the JSON API (static files in web/static/, shipped as package data, no build step).

Every page of it (/, /messages/ID, /destinations, /status, /mailboxes...) is the same index.html;
its script (static/dashboard.js) reads the path and draws the page from the API: the queue a page
at a time by cursor with the API's filters, the counters from GET /api/status's fast counts, live
updates from GET /api/events (SSE). The routes are the registry's (web/routes.py), so web/access.py
guards them as the API's, but they are not in the OpenAPI document (tag `dashboard`).

Signing in: GET /login is a form for a token; POST /login checks it and sets the session and CSRF
cookies (web/access.py says how they are checked); POST /logout clears them. A page asked for
without a session goes to /login (`login_redirect`). While no token exists, a listener on loopback
serves the dashboard without one, as it serves the API.

A message's HTML is never put into the page: GET /messages/ID/html answers it on its own, with
`Content-Security-Policy: sandbox` (RFC 7762's advice for mail shown on the web: no script, an
opaque origin, no network fetches: a remote image, a tracking pixel, is not loaded), and the page
shows it in an <iframe sandbox>.
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from msgspool.domain.tokens import READ
from msgspool.errors import NotFound
from msgspool.spooler.runtime import Spooler
from msgspool.web import content
from msgspool.web.access import CSRF_COOKIE, SESSION_COOKIE, Access, caller, csrf_token
from msgspool.web.problems import Handler, Problem
from msgspool.web.routes import Route, declared

log = logging.getLogger("msgspool.web")
TAG = "dashboard"
FORM = "application/x-www-form-urlencoded"
ACCESS: web.AppKey[Access] = web.AppKey("access", Access)
SPOOLER: web.AppKey[Spooler] = web.AppKey("dashboard_spooler", Spooler)
STATIC = resources.files("msgspool.web") / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
         ".png": "image/png"}
PAGES = ("/", "/messages/{id}", "/destinations", "/status", "/mailboxes", "/mailboxes/{mailbox}",
         "/mailboxes/{mailbox}/folders/{folder}")

# The page's own policy: its script and style files only, connections to its own origin (the API,
# SSE), frames only of its own origin (the sandboxed HTML view), and never framed by another page.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
            " frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# A message's HTML: sandboxed (no script, opaque origin), nothing fetched but inline styles and data: images.
MAIL_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:;"
            " frame-ancestors 'self'")
# same-origin, not no-referrer: under no-referrer Chromium sends a form's POST with Origin: null,
# which web/access.py's Browser check refuses as cross-origin.
SECURE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def _static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _page(body: bytes | str, status: int = 200) -> web.Response:
    text = body.decode() if isinstance(body, bytes) else body
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={"Content-Security-Policy": PAGE_CSP, **SECURE_HEADERS})


async def index(request: web.Request) -> web.Response:
    return _page(_static("index.html"))


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in TYPES or not (STATIC / name).is_file():
        raise Problem(404, f"no dashboard file {name}")
    return web.Response(body=_static(name), content_type=TYPES[suffix],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def safe_next(value: object) -> str:
    """Where to go after the login: a path of this site, never another one (an open redirect)."""
    text = str(value or "/")
    parts = urlsplit(text)
    if not text.startswith("/") or text.startswith("//") or "\\" in text or parts.scheme or parts.netloc:
        return "/"
    return text


def login_form(error: str = "", next_path: str = "/", status: int = 200) -> web.Response:
    page = _static("login.html").decode()
    page = page.replace("{error}", html.escape(error)).replace("{next}", html.escape(safe_next(next_path)))
    return _page(page.replace('class="error"></p>', 'class="error" hidden></p>') if not error else page, status)


async def login_page(request: web.Request) -> web.Response:
    return login_form(next_path=request.query.get("next", "/"))


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    secret, next_path = str(form.get("token", "")).strip(), safe_next(form.get("next"))
    if not secret:
        return login_form("Paste a token (msgspool token create --scope read, or admin).", next_path, 400)
    try:
        token = await request.app[ACCESS].check_secret(secret)
    except Problem:
        log.warning("dashboard login refused: client=%s", request.remote)
        return login_form("That token is not valid (unknown, revoked or mistyped).", next_path, 401)
    log.info("dashboard login: token=%s client=%s", token.name, request.remote)
    response = web.Response(status=303, headers={"Location": next_path, **SECURE_HEADERS})
    # Secure once the browser reached us over TLS: here, or at a proxy that ended it (which says so;
    # a client that claims it only makes its own cookie unusable over plain HTTP).
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(SESSION_COOKIE, secret, path="/", httponly=True, samesite="Strict", secure=secure)
    response.set_cookie(CSRF_COOKIE, csrf_token(secret), path="/", samesite="Strict", secure=secure)
    return response


async def logout(request: web.Request) -> web.Response:
    response = web.Response(status=303, headers={"Location": "/login", **SECURE_HEADERS})
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.del_cookie(name, path="/")
    return response


async def session(request: web.Request) -> web.Response:
    """Who the page is signed in as: the token's name and scopes (null: the loopback rule, no token)."""
    token = caller(request).token
    body: dict[str, Any] = {"token": token.name if token else None,
                            "scopes": sorted(token.scopes) if token else None}
    return web.json_response(body, headers=SECURE_HEADERS)


async def rendered(request: web.Request) -> web.Response:
    """A message's HTML part, for the message page's sandboxed frame (see the module docstring)."""
    message_id = request.match_info["id"]
    raw = await request.app[SPOOLER].store.content(message_id)
    if raw is None:
        raise NotFound(message_id)
    part = content.parsed(raw)["html"]
    if part is None:
        raise Problem(404, f"message {message_id} has no HTML part")
    headers = {"Content-Security-Policy": MAIL_CSP, **SECURE_HEADERS, "Referrer-Policy": "no-referrer"}
    return web.Response(text=part, content_type="text/html", headers=headers)


def page_routes() -> list[Route]:
    def route(method: str, path: str, handler: Handler, summary: str, scope: str | None, **kw: Any) -> Route:
        return Route(method, path, handler, summary, scope, tag=TAG, produces="text/html", **kw)

    return [
        route("GET", "/login", login_page, "The login form", None),
        route("POST", "/login", login, "Sign in with a token (sets the session cookie)", None, body_types=(FORM,)),
        route("POST", "/logout", logout, "Sign out (clears the session cookie)", None, body_types=(FORM,)),
        route("GET", "/session", session, "Who the page is signed in as", READ),
        route("GET", "/static/{name}", static, "The dashboard's script and style", None),
        route("GET", "/messages/{id}/html", rendered, "A message's HTML, sandboxed", READ),
        *(route("GET", path, index, "The dashboard", READ) for path in PAGES),
    ]


def is_page(request: web.Request) -> bool:
    route = declared(request)
    return route is not None and route.tag == TAG and request.method in ("GET", "HEAD")


@web.middleware
async def login_redirect(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A dashboard page asked for without a (working) session goes to the login form, which comes
    back here; an API request gets its 401 as before."""
    try:
        return await handler(request)
    except Problem as err:
        if err.status != 401 or not is_page(request) or request.path == "/session":
            raise
        where = request.path_qs
        response = web.Response(status=303, headers={"Location": f"/login?next={quote(where, safe='')}",
                                                     **SECURE_HEADERS})
        if request.cookies.get(SESSION_COOKIE):  # a session whose token was revoked: forget it
            response.del_cookie(SESSION_COOKIE, path="/")
            response.del_cookie(CSRF_COOKIE, path="/")
        return response
