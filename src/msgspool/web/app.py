"""The HTTP API, all under /api/ (aiohttp). Errors are RFC 9457 problem documents (problems.py);
who may call what, and the same-origin checks, are access.py's; a submission's body is read by
submission.py.

    GET  /api/status                        the status table
    GET  /api/queue[?folder=outbox&mailbox=] messages (JSON array), as `queue list --json`
    GET  /api/queue/{id}                    one message, as `queue show --json`
    POST /api/queue/flush                   retry all deferred now; ?destination=HOST&transport=NAME
                                            (or a JSON body with them): only those
    POST /api/queue/{id}/{flush|hold|release|requeue|delete}
    POST /api/queue/{id}/resend             MAPI MSGFLAG_RESEND -> 201 {ok, id, resend_of, recipients};
                                            409 when no recipient failed
    POST /api/queue/{id}/{read|unread}      the read flag (MAPI SetReadFlag) -> {ok, read, mdn: [ids]}
                                            read and delete take an optional JSON {"mdn": true|false}:
                                            the user's answer to a read receipt request (RFC 8098)
    POST /api/queue/actions                 a bulk action by selector: JSON {action: hold|release|delete|
                                            flush|requeue, where: "destination=HOST,..." or {term: value},
                                            dry_run: bool} -> {action, where, dry_run, matched, count,
                                            ids, in_flight[, flushed]} (spooler/bulk.py)
    POST /api/transports/{name}/{offline|online}  a transport takes no work / works again ->
                                            {ok, transport, status, changed, released}
    POST /api/messages                      submit: JSON {sender, recipients, content} -> 201 {id};
                                            optional addrtypes, priority, deliver_after,
                                            expires_at, max_attempts
    GET  /api/events                        Server-Sent Events; ?mailbox=ADDR&types=a,b;
                                            resumes after Last-Event-ID (header or ?last_event_id=)
    GET  /metrics                           Prometheus text format (spooler/metrics.py), both
                                            processes' figures; token scope `metrics`
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from msgspool.domain import selector
from msgspool.domain.address import mailbox_key
from msgspool.domain.events import Event, EventType
from msgspool.errors import NotFound
from msgspool.spooler import bulk
from msgspool.spooler.events import EventFilter, Subscription
from msgspool.spooler.metrics import CONTENT_TYPE, Metric, StoreFigures, exposition, from_wire, gauge, merge
from msgspool.spooler.runtime import Spooler
from msgspool.views import message_json
from msgspool.web.access import Access, Browser, access_middleware, caller, check_exposure, relay_refusal
from msgspool.web.problems import Problem, ProblemRunner, problems
from msgspool.web.submission import json_body, submission
from msgspool.web.suppressions import add_routes as add_suppression_routes

log = logging.getLogger("msgspool.web")
SPOOLER: web.AppKey[Spooler] = web.AppKey("spooler", Spooler)
STORE_FIGURES: web.AppKey[StoreFigures] = web.AppKey("store_figures", StoreFigures)
KEEPALIVE = 15.0
DISCONNECT_CHECK = 0.25  # seconds: how soon a dropped SSE client frees its subscription
REPLAY_PAGE = 1000
MAX_LIMIT = 100_000  # messages one GET /api/queue returns at most


async def status(request: web.Request) -> web.Response:
    spooler = request.app[SPOOLER]
    body = await spooler.status_table()
    body["queue"] = await spooler.store.counts()
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """This process's figures, the delivery process's (over the link) and the store's counts."""
    spooler = request.app[SPOOLER]
    extra: list[Metric] = []
    remote: list[Metric] = []
    if spooler.delivery_process:
        try:
            if spooler.remote is None:
                raise ConnectionError("no delivery process")
            remote = from_wire(await spooler.remote.metrics())
        except (ConnectionError, TimeoutError):
            pass  # restarting: its series are missing from this scrape, which says so
        extra.append(gauge("msgspool_delivery_process_up", "1 while the delivery process answers.", (),
                           [((), 1 if remote else 0)]))
    store = await request.app[STORE_FIGURES].families()
    body = exposition(merge(spooler.metrics.collect(), remote, store, extra))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def queue_list(request: web.Request) -> web.Response:
    spooler = request.app[SPOOLER]
    folders = tuple(request.query.get("folder", "outbox").split(","))
    mailbox = request.query.get("mailbox")
    limit = _limit(request.query.get("limit", "1000"))
    infos = await spooler.store.list_messages(folders, mailbox_key(mailbox) if mailbox else mailbox, limit)
    return web.json_response([message_json(info) for info in infos])


def _limit(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) <= MAX_LIMIT):
        raise Problem(400, f"limit must be a whole number from 0 to {MAX_LIMIT}", field="limit")
    return int(value)


async def queue_show(request: web.Request) -> web.Response:
    info = await request.app[SPOOLER].store.get(request.match_info["id"])
    if info is None:
        raise NotFound(request.match_info["id"])
    return web.json_response(message_json(info))


async def queue_action(request: web.Request) -> web.Response:
    spooler, action = request.app[SPOOLER], request.match_info["action"]
    message_id = request.match_info.get("id")
    if action == "flush":
        route = {} if message_id else await _flush_route(request)
        count = await spooler.flush([message_id] if message_id else None, **route)
        return web.json_response({"ok": True, "flushed": count})
    if message_id is None:
        raise web.HTTPNotFound()
    if action == "resend":
        return web.json_response({"ok": True, **await spooler.resend(message_id)}, status=201)
    if action in ("read", "unread"):
        sent = await spooler.mark_read([message_id], action == "read", mdn=await _mdn_consent(request))
        return web.json_response({"ok": True, "read": action == "read", "mdn": sent})
    if action == "delete":
        return web.json_response({"ok": True, "delete": await spooler.delete([message_id],
                                                                         mdn=await _mdn_consent(request))})
    operations = {"hold": spooler.hold, "release": spooler.release, "requeue": spooler.requeue}
    if action not in operations:
        raise web.HTTPNotFound(text=f"unknown action {action}")
    return web.json_response({"ok": True, action: await operations[action]([message_id])})


async def bulk_action(request: web.Request) -> web.Response:
    spooler = request.app[SPOOLER]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Problem(400, 'expected JSON {"action": "hold", "where": "destination=example.com", "dry_run": true}')
    action, dry_run = body.get("action"), body.get("dry_run", False)
    if action not in bulk.ACTIONS:
        raise Problem(400, f"action must be one of {', '.join(bulk.ACTIONS)}", field="action")
    if not isinstance(dry_run, bool):
        raise Problem(400, "dry_run must be true or false", field="dry_run")
    try:
        where = selector.from_json(body.get("where"))
    except selector.SelectorError as err:
        raise Problem(400, f"where: {err}", field="where") from err
    result = await bulk.run(spooler.store, lambda a, ids: bulk.apply_chunk(spooler, a, ids), action, where,
                            dry_run=dry_run)
    return web.json_response({"ok": True, **result.to_json()})


async def transport_action(request: web.Request) -> web.Response:
    spooler = request.app[SPOOLER]
    answer = await spooler.set_offline(request.match_info["name"], request.match_info["action"] == "offline")
    return web.json_response({"ok": True, **answer})


async def _flush_route(request: web.Request) -> dict[str, str]:
    """`transport` and `destination` of a flush: query parameters, or the optional JSON body."""
    body = await json_body(request) if request.can_read_body else None
    if body is not None and not isinstance(body, dict):
        raise Problem(400, 'expected JSON {"transport": NAME, "destination": HOST}')
    route = {}
    for key in ("transport", "destination"):
        value = request.query.get(key, (body or {}).get(key))
        if value is not None and not (isinstance(value, str) and value):
            raise Problem(400, f"{key} must be a non-empty string", field=key)
        if value is not None:
            route[key] = value
    return route


async def _mdn_consent(request: web.Request) -> bool | None:
    """The optional body {"mdn": true|false|null}: whether the user agrees to send a read receipt."""
    if not request.can_read_body:
        return None
    body = await json_body(request)
    consent = body.get("mdn") if isinstance(body, dict) else None
    if (body is not None and not isinstance(body, dict)) or (consent is not None and not isinstance(consent, bool)):
        raise Problem(400, 'expected JSON {"mdn": true|false}', field="mdn")
    return consent


async def submit(request: web.Request) -> web.Response:
    spooler, who = request.app[SPOOLER], caller(request)
    sub = submission(await json_body(request))
    if (refusal := relay_refusal(who, sub, spooler.intake.router)) is not None:
        log.warning("http relay refused: client=%s token=%s recipients=%d", request.remote, who.name or "-",
                    len(sub.recipients))
        raise refusal
    if who.token is not None:
        sub.meta["http_token"] = who.name  # the history says who submitted it
    message = await spooler.commit(sub)
    # Each recipient as the commit left it: one on the suppression list has failed already, with why.
    recipients = [{"address": r.address, "status": str(r.status),
                   "reply": r.last_reply.line() if r.last_reply else None}
                  for part in (message, *(p for p, _c in message.parts)) for r in part.recipients]
    return web.json_response({"id": message.id, "recipients": recipients}, status=201)


async def events(request: web.Request) -> web.StreamResponse:
    spooler = request.app[SPOOLER]
    flt = EventFilter(_parse_types(request.query.get("types")), request.query.get("mailbox"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    live = spooler.bus.subscribe(types=flt.types, mailbox=flt.mailbox)  # before replaying: nothing falls between
    try:
        sent = await _replay(request, response, flt, _last_event_id(request))
        await _stream(request, response, live, sent)
    except (ConnectionResetError, StopAsyncIteration, asyncio.CancelledError):
        pass
    finally:
        await live.aclose()
    return response


def _last_event_id(request: web.Request) -> int | None:
    """The id to resume after. One that is not a whole number is ignored, as the SSE spec lets a
    server do (WHATWG HTML, server-sent events: the header is a hint): the stream starts live."""
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    if not (last.isascii() and last.isdigit() and len(last) <= 18):  # 18 digits: an SQLite INTEGER
        return None
    return int(last)


async def _replay(request: web.Request, response: web.StreamResponse, flt: EventFilter, last: int | None) -> int:
    """Write the stored events after `last` that match; returns the highest id looked at (0: none)."""
    if last is None:
        return 0
    spooler, sent = request.app[SPOOLER], last
    # The delivery process forwards events only once it was told someone listens: wait until it
    # was, so that each of its events is either in the store by now or on its way to `live`.
    await spooler.sync_events()
    while page := await spooler.store.events_after(sent, REPLAY_PAGE):  # every page: a gap would lose events
        for event in page:
            if flt.matches(event):
                await response.write(_sse(event))
        sent = max(sent, page[-1].id or 0)
    return sent


async def _stream(request: web.Request, response: web.StreamResponse, live: Subscription, sent: int) -> None:
    """Live events newer than `sent` (older ones were replayed), a comment line every KEEPALIVE.

    aiohttp does not cancel a handler whose client went away (handler_cancellation is off, and
    should stay off for the handlers that commit), and a write notices a dead socket only when it
    happens: a client that drops while no event comes would keep its subscription, and the
    delivery process forwarding events, until the next keep-alive. So the loop also wakes every
    DISCONNECT_CHECK to look at the connection, and ends as soon as it is gone."""
    pending = asyncio.ensure_future(anext(live))
    quiet = 0.0
    try:
        while not _gone(request):
            done, _ = await asyncio.wait({pending}, timeout=DISCONNECT_CHECK)
            if not done:
                quiet += DISCONNECT_CHECK
                if quiet >= KEEPALIVE:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                continue
            event, pending = pending.result(), asyncio.ensure_future(anext(live))
            if (event.id or 0) > sent:
                await response.write(_sse(event))
    finally:
        pending.cancel()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _parse_types(value: str | None) -> frozenset[EventType] | None:
    if not value:
        return None
    try:
        return frozenset(EventType(v.strip()) for v in value.split(",") if v.strip())
    except ValueError as err:
        raise Problem(400, f"types: unknown event type in {value!r}; known: {', '.join(EventType)}",
                      field="types") from err


def _sse(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.to_json())}\n\n".encode()


def make_app(spooler: Spooler, host: str = "127.0.0.1", port: int = 8025) -> web.Application:
    """The API as served on host:port (web/access.py's rules depend on where it listens)."""
    # A message's JSON can take twice its size (CRLF is four characters): the size limit itself is
    # intake's, answered 413 too.
    body_limit = max(1 << 20, 2 * spooler.settings.message_size_limit + (64 << 10))
    access = Access(spooler.store, host, spooler.settings.trusted_networks)
    browser = Browser(host, port, spooler.settings.http_hosts)
    app = web.Application(middlewares=[problems, access_middleware(access, browser)], client_max_size=body_limit)
    app[SPOOLER] = spooler
    app[STORE_FIGURES] = StoreFigures(spooler.store)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/queue", queue_list)
    app.router.add_post("/api/queue/{action:flush}", queue_action)
    app.router.add_post("/api/queue/actions", bulk_action)
    app.router.add_get("/api/queue/{id}", queue_show)
    app.router.add_post("/api/queue/{id}/{action}", queue_action)
    app.router.add_post("/api/transports/{name}/{action:offline|online}", transport_action)
    app.router.add_post("/api/messages", submit)
    app.router.add_get("/api/events", events)
    add_suppression_routes(app, spooler)
    app.router.add_get("/metrics", metrics)
    return app


async def start(spooler: Spooler, host: str, port: int) -> web.AppRunner:
    await check_exposure(spooler.store, host, port)
    runner = ProblemRunner(make_app(spooler, host, port), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
