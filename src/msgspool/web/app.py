"""The HTTP API, all under /api/ (aiohttp), declared once in `api_routes` (web/routes.py's
registry: the aiohttp routes and the OpenAPI 3.1 document at GET /api/openapi.json are both made
from it; the answers' shapes are web/models.py's). Errors are RFC 9457 problem documents
(problems.py); who may call what, and the same-origin checks, are access.py's; a submission's
body is read by submission.py, a message's MIME tree by content.py. The README's HTTP API
section lists the routes; the document describes each.

Lists page by cursor (`?limit=&cursor=` -> `next_cursor`, and the Next-Cursor and RFC 8288 Link
headers), through the store's `Mailboxes.list_messages(after=)` and `Events.events_after`, so on
SQLite and PostgreSQL alike a page costs an index range, not the whole list.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msgspool.domain import selector
from msgspool.domain.address import mailbox_key
from msgspool.domain.events import Event, EventType
from msgspool.domain.message import MessageInfo
from msgspool.domain.tokens import ADMIN, METRICS, READ, SUBMIT
from msgspool.errors import NotFound
from msgspool.listeners import HTTPCounts
from msgspool.spooler import bulk
from msgspool.spooler.events import EventFilter, Subscription
from msgspool.spooler.metrics import CONTENT_TYPE, Metric, StoreFigures, exposition, from_wire, gauge, merge
from msgspool.spooler.runtime import Spooler
from msgspool.views import message_json
from msgspool.web import content, dashboard, models, openapi
from msgspool.web.access import Access, Browser, access_middleware, caller, check_exposure, relay_refusal
from msgspool.web.problems import Handler, Problem, ProblemRunner, problems
from msgspool.web.routes import JSON, Answered, Route, declared, install, params
from msgspool.web.submission import RFC822, json_body, raw_submission, submission
from msgspool.web.suppressions import SPOOLER as SUPPRESSION_SPOOLER
from msgspool.web.suppressions import routes as suppression_routes

log = logging.getLogger("msgspool.web")
SPOOLER: web.AppKey[Spooler] = web.AppKey("spooler", Spooler)
HTTP_COUNTS: web.AppKey[HTTPCounts] = web.AppKey("http_counts", HTTPCounts)  # the status table's http row
DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi", bytes)
STORE_FIGURES: web.AppKey[StoreFigures] = web.AppKey("store_figures", StoreFigures)
KEEPALIVE = 15.0
DISCONNECT_CHECK = 0.25  # seconds: how soon a dropped SSE client frees its subscription
REPLAY_PAGE = 1000
MAX_LIMIT = 100_000  # messages one GET /api/queue returns at most


class QueueQuery(BaseModel):
    """GET /api/queue: a queue search. Its terms are the selector's (domain/selector.py), the same
    as `queue list --where` and the bulk actions take, given one by one or whole as `where`."""

    model_config = ConfigDict(extra="ignore")
    limit: int = Field(1000, ge=0, le=MAX_LIMIT, description="messages per page")
    cursor: str | None = Field(None, description="next_cursor of the previous page (the Next-Cursor header)")
    where: str | None = Field(None, description="a selector: TERM=VALUE,... with the terms below"
                                                " (e.g. destination=example.com,status=deferred,older-than=1h)")
    folder: str | None = Field(None, description="folders, comma-separated (outbox, inbox, sent, ...), or * for"
                                                 " every folder; default: outbox")
    mailbox: str | None = Field(None, description="only the messages of this local mailbox (<>: the spool's own"
                                                  " outbox)")
    sender: str | None = Field(None, description="the envelope sender: ADDRESS or @DOMAIN; <> for the null sender")
    recipient: str | None = Field(None, description="a recipient: ADDRESS or @DOMAIN")
    subject: str | None = Field(None, description="the Subject contains this text (case-insensitive, at most"
                                                  " 200 characters)")
    status: models.RecipientStatus | None = Field(None, description="only messages with a recipient in this status")
    destination: str | None = Field(None, description="only messages with a recipient for this destination (a"
                                                      " nexthop as the status table lists it)")
    transport: str | None = Field(None, description="only messages with a recipient routed to this transport")
    older_than: str | None = Field(None, description="submitted longer ago than this: 90s, 30m, 1h, 2d, 1w")
    newer_than: str | None = Field(None, description="submitted less long ago than this: 90s, 30m, 1h, 2d, 1w")
    order: Literal["oldest", "newest"] = Field("oldest", description="oldest first (submission order) or newest"
                                                                     " first; a cursor goes on in its page's order")

    def selector(self) -> selector.Selector:
        """The search these parameters ask for (a Problem 400 naming the bad term)."""
        pairs = [(name, str(value)) for name in SEARCH_TERMS if (value := getattr(self, name)) is not None]
        try:
            where = selector.parse_selector(self.where) if self.where is not None else None
            given = selector.make(pairs) if pairs else selector.Selector()
        except selector.SelectorError as err:
            raise Problem(400, str(err), field="where" if self.where is not None and not pairs else None) from err
        if where is None:
            return given
        twice = set(where.to_json()) & set(given.to_json())
        if twice:
            name = sorted(twice)[0]
            raise Problem(400, f"term {name!r} given twice (in where and as a parameter)", field=name.replace("-", "_"))
        merged = {**{k: v for k, v in dataclasses.asdict(where).items() if v is not None},
                  **{k: v for k, v in dataclasses.asdict(given).items() if v is not None and k != "text"}}
        merged["text"] = ",".join(filter(None, [where.text, given.text]))
        return selector.Selector(**merged)


SEARCH_TERMS = ("folder", "mailbox", "sender", "recipient", "subject", "status", "destination", "transport",
                "older_than", "newer_than")


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int = Field(1000, ge=0, le=MAX_LIMIT, description="items per page")
    cursor: str | None = Field(None, description="next_cursor of the previous page")


class MailboxesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int = Field(100, ge=1, le=1000, description="mailboxes per page")
    cursor: str | None = Field(None, min_length=1, max_length=1000,
                               description="next_cursor of the previous page (the address it ended with)")


class EventLogQuery(PageQuery):
    mailbox: str | None = Field(None, description="only the events of this mailbox")
    types: str | None = Field(None, description="event types, comma-separated")


class FlushQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    transport: str | None = Field(None, min_length=1, description="only recipients routed to this transport")
    destination: str | None = Field(None, min_length=1, description="only recipients for this destination")


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    mailbox: str | None = Field(None, description="only the events of this mailbox")
    types: str | None = Field(None, description="event types, comma-separated")
    last_event_id: str | None = Field(None, description="resume after this id (as the Last-Event-ID header)")


async def status(request: web.Request) -> Any:
    spooler = request.app[SPOOLER]
    body = await spooler.status_table()
    body["queue"] = await spooler.store.counts()
    return body


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


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


def encode_cursor(info: MessageInfo) -> str:
    """An opaque cursor: the (submitted_at, id) of a page's last message (Mailboxes.list_messages)."""
    return base64.urlsafe_b64encode(json.dumps([info.submitted_at, info.id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int | float)
                and not isinstance(value[0], bool) and isinstance(value[1], str)):
            return float(value[0]), value[1]
    except (ValueError, UnicodeDecodeError):
        pass
    raise Problem(400, "cursor is not one this API gave (next_cursor of a page)", field="cursor")


def next_page(request: web.Request, cursor: str | None) -> dict[str, str]:
    """The headers that point at the next page: Next-Cursor and an RFC 8288 Link."""
    if cursor is None:
        return {}
    url = request.rel_url.update_query(cursor=cursor)
    return {"Next-Cursor": cursor, "Link": f'<{url}>; rel="next"'}


async def _page(request: web.Request, folders: tuple[str, ...], mailbox: str | None, limit: int,
                cursor: str | None) -> tuple[list[MessageInfo], str | None]:
    store = request.app[SPOOLER].store
    infos = await store.list_messages(folders, mailbox_key(mailbox) if mailbox else mailbox, limit + 1,
                                      after=decode_cursor(cursor))
    more = len(infos) > limit
    infos = infos[:limit]
    return infos, encode_cursor(infos[-1]) if more and infos else None


async def queue_list(request: web.Request) -> Answered:
    """A page of a queue search (Queue.search), in id order (that is, of submission; or newest
    first): the array `queue list --json` prints (DESIGN.md); a next page's cursor is in the headers."""
    query = params(request, QueueQuery)
    where = query.selector()
    cursor = query.cursor
    if cursor is not None and not (cursor.startswith("~") and 1 < len(cursor) <= 201 and cursor.isascii()
                                   and cursor.isprintable() and " " not in cursor):
        raise Problem(400, "cursor is not one this API gave (next_cursor of a page)", field="cursor")
    infos, after = await request.app[SPOOLER].store.search(where, time.time(), after=(cursor or "~")[1:],
                                                           limit=query.limit, newest_first=query.order == "newest")
    return Answered([message_json(info) for info in infos], next_page(request, None if after is None else f"~{after}"))


async def mailboxes(request: web.Request) -> Answered:
    """The local mailboxes by address, a page at a time, each with its folders (Mailboxes.list_mailboxes)."""
    query = params(request, MailboxesQuery)
    if query.cursor is not None and not query.cursor.isprintable():  # no NUL into PostgreSQL's text
        raise Problem(400, "cursor is not one this API gave (next_cursor of a page)", field="cursor")
    page = await request.app[SPOOLER].store.list_mailboxes(query.limit + 1, after=query.cursor or "")
    more = len(page) > query.limit
    page = page[:query.limit]
    cursor = page[-1].address if more and page else None
    return Answered({"mailboxes": [{"address": m.address, "created_at": m.created_at, "folders": m.folders}
                                   for m in page], "next_cursor": cursor}, next_page(request, cursor))


async def mailbox_folders(request: web.Request) -> Any:
    mailbox = request.match_info["mailbox"]
    folders = await request.app[SPOOLER].store.mailbox_folders(mailbox_key(mailbox))
    if folders is None:
        raise Problem(404, f"no mailbox {mailbox} (nothing was filed into it or sent from it)")
    return {"mailbox": mailbox, "folders": folders}


async def folder_messages(request: web.Request) -> Answered:
    query = params(request, PageQuery)
    mailbox, folder = request.match_info["mailbox"], request.match_info["folder"]
    infos, cursor = await _page(request, (folder,), mailbox, query.limit, query.cursor)
    return Answered({"messages": [message_json(i) for i in infos], "next_cursor": cursor}, next_page(request, cursor))


async def event_log(request: web.Request) -> Answered:
    """The stored events after the cursor (an event id), oldest first: what SSE replays, as pages.
    A page holds the matching ones of `limit` stored events (fewer, perhaps none, with a filter)."""
    query = params(request, EventLogQuery)
    flt = EventFilter(_parse_types(query.types), query.mailbox)
    after = query.cursor or "0"
    if not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise Problem(400, "cursor must be an event id (next_cursor of a page)", field="cursor")
    page = await request.app[SPOOLER].store.events_after(int(after), query.limit + 1)
    more = len(page) > query.limit
    page = page[:query.limit]
    cursor = str(page[-1].id) if more and page and page[-1].id is not None else None
    return Answered({"events": [e.to_json() for e in page if flt.matches(e)], "next_cursor": cursor},
                    next_page(request, cursor))


async def queue_show(request: web.Request) -> Any:
    info = await request.app[SPOOLER].store.get(request.match_info["id"])
    if info is None:
        raise NotFound(request.match_info["id"])
    return message_json(info)


async def message_events(request: web.Request) -> Answered:
    """Every attempt of each recipient of one message, with its reply (Events.message_events)."""
    query = params(request, PageQuery)
    message_id, after = request.match_info["id"], query.cursor or "0"
    if not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise Problem(400, "cursor must be an event id (next_cursor of a page)", field="cursor")
    store = request.app[SPOOLER].store
    page = await store.message_events(message_id, after=int(after), limit=query.limit + 1)
    if not page and int(after) == 0 and await store.get(message_id) is None:
        raise NotFound(message_id)
    more = len(page) > query.limit
    page = page[:query.limit]
    cursor = str(page[-1].id) if more and page and page[-1].id is not None else None
    events = [e.to_json() for e in page]
    recipients: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("recipient"):
            recipients.setdefault(event["recipient"], []).append(event)
    return Answered({"message_id": message_id, "events": events, "recipients": recipients, "next_cursor": cursor},
                    next_page(request, cursor))


async def _content(request: web.Request) -> bytes:
    message_id = request.match_info["id"]
    raw = await request.app[SPOOLER].store.content(message_id)
    if raw is None:
        raise NotFound(message_id)
    return raw


async def raw_content(request: web.Request) -> web.Response:
    """The message as stored (RFC 5322), as message/rfc822 (RFC 2046 §5.2.1)."""
    return web.Response(body=await _content(request), content_type="message/rfc822")


async def parsed_content(request: web.Request) -> Any:
    return content.parsed(await _content(request))


async def attachment(request: web.Request) -> web.Response:
    index = request.match_info["index"]
    if not (index.isascii() and index.isdigit() and len(index) <= 6):
        raise Problem(400, "index must be a whole number (an attachment's index in .../parsed)", field="index")
    part = content.attachment(await _content(request), int(index))
    if part is None:
        raise Problem(404, f"message {request.match_info['id']} has no attachment {index}")
    disposition = f"attachment; filename*=UTF-8''{quote(part.filename)}" if part.filename else "attachment"
    return web.Response(body=part.payload, headers={"Content-Type": part.content_type,
                                                    "Content-Disposition": disposition})


async def flush_all(request: web.Request) -> Any:
    """Retry deferred recipients now: all, or those of a transport and/or destination (query
    parameters, or the optional JSON body with them)."""
    route = await _flush_route(request)
    return {"ok": True, "flushed": await request.app[SPOOLER].flush(None, **route)}


async def flush_one(request: web.Request) -> Any:
    return {"ok": True, "flushed": await request.app[SPOOLER].flush([request.match_info["id"]])}


async def resend(request: web.Request) -> Any:
    return {"ok": True, **await request.app[SPOOLER].resend(request.match_info["id"])}


async def read(request: web.Request) -> Any:
    return await _read_flag(request, True)


async def unread(request: web.Request) -> Any:
    return await _read_flag(request, False)


async def _read_flag(request: web.Request, flag: bool) -> Any:
    spooler, message_id, consent = request.app[SPOOLER], request.match_info["id"], await _mdn_consent(request)
    targets = (await spooler.read_targets([message_id]))[message_id]  # a submission's id: its local copies
    sent = await spooler.mark_read([message_id], flag, mdn=consent)
    return {"ok": True, "read": flag, "targets": targets, "mdn": sent}


async def delete(request: web.Request) -> Any:
    spooler = request.app[SPOOLER]
    return {"ok": True, "delete": await spooler.delete([request.match_info["id"]], mdn=await _mdn_consent(request))}


def operation(action: str) -> Handler:
    async def handle(request: web.Request) -> Any:
        spooler = request.app[SPOOLER]
        act = {"hold": spooler.hold, "release": spooler.release, "requeue": spooler.requeue}[action]
        return {"ok": True, action: await act([request.match_info["id"]])}

    return handle


async def bulk_action(request: web.Request) -> Any:
    """An action on every message a selector matches (spooler/bulk.py), or with dry_run their count."""
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
    if not where.in_outbox_only():
        raise Problem(400, "where: a bulk action works on the outbox: no folder or mailbox term (but folder=outbox)",
                      field="where")
    result = await bulk.run(spooler.store, lambda a, ids: bulk.apply_chunk(spooler, a, ids), action, where,
                            dry_run=dry_run)
    return {"ok": True, **result.to_json()}


async def transport_offline(request: web.Request) -> Any:
    return {"ok": True, **await request.app[SPOOLER].set_offline(request.match_info["name"], True)}


async def transport_online(request: web.Request) -> Any:
    return {"ok": True, **await request.app[SPOOLER].set_offline(request.match_info["name"], False)}


async def fetch_now(request: web.Request) -> Any:
    """`msgspool fetch [NAME]`: the fetch accounts (or the one named) poll now."""
    spooler, name = request.app[SPOOLER], request.match_info.get("name")
    woken = spooler.fetch.poke(name) if spooler.fetch is not None else 0
    if name and not woken:
        raise Problem(404, f"no fetch account {name}")
    return {"ok": True, "accounts": woken}


async def _flush_route(request: web.Request) -> dict[str, str]:
    """`transport` and `destination` of a flush: query parameters, or the optional JSON body."""
    body = await json_body(request) if request.can_read_body else None
    if body is not None and not isinstance(body, dict):
        raise Problem(400, 'expected JSON {"transport": NAME, "destination": HOST}')
    route = {}
    for key in ("transport", "destination"):
        for value in ((body or {}).get(key), request.query.get(key)):  # both checked: the query's wins
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


async def submit(request: web.Request) -> Any:
    spooler, who = request.app[SPOOLER], caller(request)
    if request.content_type == RFC822:
        sub = raw_submission(request.query, await request.read())
    else:
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
    # The id story (issue 13.2): the queue id, and the id of each copy filed for a local recipient.
    copies = [{"recipient": c.copy_for, "mailbox": c.mailbox, "id": c.id} for c in message.filed]
    return {"id": message.id, "recipients": recipients, "copies": copies}


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


def _counting(counts: HTTPCounts) -> Any:
    """Requests so far and open now, for the status table (listeners.py)."""

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        counts.requests += 1
        counts.open += 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            counts.open -= 1

    return count


Q, A, M = "queue", "actions", "mailboxes"
SEARCH_DESCRIPTION = (
    "Every term narrows the search (they all must hold; the recipient terms for one and the same recipient),"
    " the same terms as `msgspool queue list --where` and POST /api/queue/actions take. Messages come in id"
    " order, which is their order of submission. A page reads a bounded part of an index, so the page of a"
    " sparse search (a subject, terms that rarely meet) may hold fewer than `limit` messages, even none,"
    " and still have a next page: go on while the answer has a Next-Cursor header.")
ERR_ID = (404,)


def api_routes() -> list[Route]:
    """Every route of the API (and /metrics), in the order aiohttp tries them: fixed paths first."""
    msg, ok = models.MessageView, models.Done
    return [
        Route("GET", "/api/openapi.json", openapi_json, "This document (OpenAPI 3.1)", None, tag="meta"),
        Route("GET", "/api/status", status, "The status table", READ, models.StatusTable, tag="status"),
        Route("GET", "/api/queue", queue_list, "Search the messages of any folder (the outbox by default), a page"
              " at a time", READ, list[models.MessageView], query=QueueQuery, headers=("Next-Cursor", "Link"),
              description=SEARCH_DESCRIPTION),
        Route("POST", "/api/queue/flush", flush_all, "Retry deferred recipients now", ADMIN, models.Flushed,
              query=FlushQuery, body=models.FlushRoute, tag=A, errors=(404,)),
        Route("POST", "/api/queue/actions", bulk_action, "hold, release, delete, flush or requeue the messages a"
              " selector matches (dry_run: count them)", ADMIN, models.BulkResult, body=models.BulkAction,
              tag=A),
        Route("GET", "/api/queue/{id}", queue_show, "One message with every recipient and its history", READ,
              msg, errors=ERR_ID),
        Route("GET", "/api/queue/{id}/events", message_events, "Every attempt of each recipient, with its reply",
              READ, models.MessageEvents, query=PageQuery, headers=("Next-Cursor", "Link"), errors=ERR_ID),
        Route("GET", "/api/queue/{id}/content", raw_content, "The message as stored (RFC 5322)", READ,
              produces=RFC822, errors=ERR_ID),
        Route("GET", "/api/queue/{id}/parsed", parsed_content, "Headers, text, HTML and the attachments list",
              READ, models.ParsedContent, errors=ERR_ID),
        Route("GET", "/api/queue/{id}/attachments/{index}", attachment, "One attachment, decoded", READ,
              produces="application/octet-stream", path_types={"index": int}, errors=ERR_ID),
        Route("POST", "/api/queue/{id}/flush", flush_one, "Retry this message's deferred recipients now", ADMIN,
              models.Flushed, tag=A),
        *(Route("POST", f"/api/queue/{{id}}/{name}", operation(name), text, ADMIN, ok, tag=A)
          for name, text in (("hold", "Hold the message (postsuper -h)"), ("release", "Release a held message"),
                             ("requeue", "Through the outbound hooks again (postsuper -r)"))),
        Route("POST", "/api/queue/{id}/delete", delete, "Delete the message (with the user's read receipt answer)",
              ADMIN, ok, body=models.ReadConsent, tag=A, errors=(409,)),
        Route("POST", "/api/queue/{id}/resend", resend, "Send again to the recipients that failed (MAPI RESEND)",
              ADMIN, models.Resent, status=201, tag=A, errors=(404, 409)),
        Route("POST", "/api/queue/{id}/read", read, "Mark read (MAPI SetReadFlag), answering a read receipt",
              ADMIN, models.ReadAnswer, body=models.ReadConsent, tag=A),
        Route("POST", "/api/queue/{id}/unread", unread, "Mark unread", ADMIN, models.ReadAnswer,
              body=models.ReadConsent, tag=A),
        Route("POST", "/api/transports/{name}/offline", transport_offline, "The transport takes no work", ADMIN,
              models.TransportState, tag="status", errors=(404,)),
        Route("POST", "/api/transports/{name}/online", transport_online, "The transport works again", ADMIN,
              models.TransportState, tag="status", errors=(404,)),
        Route("POST", "/api/fetch", fetch_now, "The fetch accounts poll their servers now", ADMIN,
              models.FetchPolled, tag="status"),
        Route("POST", "/api/fetch/{name}", fetch_now, "This fetch account polls its server now", ADMIN,
              models.FetchPolled, tag="status", errors=(404,)),
        Route("POST", "/api/messages", submit, "Submit a message (JSON, or the raw message as message/rfc822)",
              SUBMIT, models.Submitted, status=201, body=models.Submit,
              body_types=(JSON, RFC822), query=RawQuery, tag="submit", errors=(403, 422, 503, 507)),
        Route("GET", "/api/mailboxes", mailboxes, "The local mailboxes by address, each with its folders, a page"
              " at a time", READ, models.MailboxPage, query=MailboxesQuery, tag=M, headers=("Next-Cursor", "Link")),
        Route("GET", "/api/mailboxes/{mailbox}/folders", mailbox_folders, "A mailbox's folders", READ,
              models.Folders, tag=M, errors=(404,)),
        Route("GET", "/api/mailboxes/{mailbox}/folders/{folder}/messages", folder_messages,
              "The messages of a mailbox's folder, a page at a time", READ, models.MessagePage, query=PageQuery,
              tag=M, headers=("Next-Cursor", "Link")),
        Route("GET", "/api/events", events, "Server-Sent Events, live (and replayed after Last-Event-ID)", READ,
              query=EventsQuery, produces="text/event-stream", tag="events"),
        Route("GET", "/api/events/log", event_log, "The stored events after a cursor, a page at a time", READ,
              models.EventPage, query=EventLogQuery, tag="events", headers=("Next-Cursor", "Link")),
        *suppression_routes(),
        Route("GET", "/metrics", metrics, "Prometheus text format, both processes' figures", METRICS,
              produces="text/plain", tag="status"),
    ]


class RawQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sender: str | None = Field(None, description="message/rfc822 only: the envelope sender")
    recipient: list[str] | None = Field(None, description="message/rfc822 only: the recipients (else To/Cc/Bcc)")


def make_app(spooler: Spooler, host: str = "127.0.0.1", port: int = 8025) -> web.Application:
    """The API as served on host:port (web/access.py's rules depend on where it listens)."""
    # A message's JSON can take twice its size (CRLF is four characters): the size limit itself is
    # intake's, answered 413 too.
    body_limit = max(1 << 20, 2 * spooler.settings.message_size_limit + (64 << 10))
    access = Access(spooler.store, host, spooler.settings.trusted_networks)
    browser = Browser(host, port, spooler.settings.http_hosts)
    counts = HTTPCounts()
    app = web.Application(middlewares=[_counting(counts), problems, dashboard.login_redirect,
                                       access_middleware(access, browser, declared)], client_max_size=body_limit)
    app[SPOOLER] = app[SUPPRESSION_SPOOLER] = app[dashboard.SPOOLER] = spooler
    app[dashboard.ACCESS] = access
    app[HTTP_COUNTS] = counts
    app[STORE_FIGURES] = StoreFigures(spooler.store)
    routes = api_routes()
    app[DOCUMENT] = json.dumps(openapi.document(routes)).encode()
    install(app, routes + dashboard.page_routes())  # the dashboard's pages: not in the document
    return app


async def start(spooler: Spooler, host: str, port: int) -> web.AppRunner:
    await check_exposure(spooler.store, host, port)
    runner = ProblemRunner(make_app(spooler, host, port), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
