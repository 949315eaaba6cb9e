"""The suppression list over HTTP (domain/suppression.py), behind the API's tokens (web/access.py:
GET needs the read scope, POST and DELETE admin):

    GET    /api/suppressions              the entries in force: [{address, reason, source,
                                          created_at, until, message_id}]
    POST   /api/suppressions              {"address": ..., "reason": ..., "until": ISO or POSIX time
                                          | "days": N | neither: `suppression_time` from now
                                          (until removed when that is 0)} -> 201 and the entry
    DELETE /api/suppressions/{address}    mail to it goes again at once -> 200; 404 if not listed
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from msgspool.domain.address import valid_smtp
from msgspool.domain.timefmt import OutOfRange, parse_time
from msgspool.domain.tokens import ADMIN, READ
from msgspool.spooler.runtime import Spooler
from msgspool.views import suppression_json
from msgspool.web.models import NewSuppression, SuppressionView, Unsuppressed
from msgspool.web.problems import Problem
from msgspool.web.routes import Route
from msgspool.web.submission import json_body, malformed, out_of_range

SPOOLER: web.AppKey[Spooler] = web.AppKey("suppression_spooler", Spooler)


async def list_suppressions(request: web.Request) -> Any:
    return [suppression_json(e) for e in await request.app[SPOOLER].suppressions()]


async def add_suppression(request: web.Request) -> Any:
    spooler = request.app[SPOOLER]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise malformed(None, 'expected a JSON object {"address": ..., "reason": ..., "until" or "days": ...}')
    address, reason = body.get("address"), body.get("reason", "")
    if not isinstance(address, str) or not valid_smtp(address) or not address:
        raise malformed("address", "address must be an email address")
    if not isinstance(reason, str):
        raise malformed("reason", "reason must be a string")
    if spooler.router.is_local(address):
        raise out_of_range("address", f"{address} is in a local domain: the list is for mail that leaves (refuse a"
                                      " local mailbox with `mailboxes`)")
    until = _until(body, spooler.settings.suppression_time)
    entry = await spooler.suppress(address, reason, until)
    return suppression_json(entry)


def _until(body: dict[str, Any], default: float) -> float | None:
    if "until" in body and "days" in body:
        raise malformed("until", "give until or days, not both")
    if body.get("until") is not None:
        try:
            return parse_time(body["until"])
        except OutOfRange as err:
            raise out_of_range("until", str(err)) from err
        except ValueError as err:
            raise malformed("until", f"until must be an ISO 8601 time with a zone or POSIX seconds: {err}") from err
    days = body.get("days")
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days <= 36500:
            raise malformed("days", "days must be a number from 0 (until removed) to 36500")
        return time.time() + days * 86400 if days else None
    return time.time() + default if default > 0 else None


async def remove_suppression(request: web.Request) -> Any:
    address = request.match_info["address"]
    if not await request.app[SPOOLER].unsuppress(address):
        raise Problem(404, f"{address} is not on the suppression list", title="Not found")
    return {"ok": True, "address": address}


def routes() -> list[Route]:
    """The routes, for web/app.py's registry (app[SPOOLER] set by make_app)."""
    return [
        Route("GET", "/api/suppressions", list_suppressions, "The suppression list's entries in force", READ,
              list[SuppressionView], tag="suppressions"),
        Route("POST", "/api/suppressions", add_suppression, "Suppress an address", ADMIN, SuppressionView,
              status=201, body=NewSuppression, tag="suppressions", errors=(422,)),
        Route("DELETE", "/api/suppressions/{address}", remove_suppression, "Mail to the address goes again",
              ADMIN, Unsuppressed, tag="suppressions", errors=(404,)),
    ]
