"""RFC 9457 problem documents: every error answer of the HTTP API is one, whatever raised it.

`Problem` is the exception a handler raises for a refusal in the API's own words (`field` names
the member of the request at fault, an extension member RFC 9457 §3.2 allows). The `problems`
middleware turns it, aiohttp's own HTTP errors (404, 405, 413, ...), the spool's refusals and any
a spool without room (507 Insufficient Storage, RFC 4918 §11.5), unexpected failure (500, logged,
no internals told) into ``application/problem+json``;
`ProblemServer` does the same for what aiohttp refuses before a handler runs (a malformed request
line, headers too large).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from msgspool.errors import NotFound, NothingToResend, StorageFull, SubmitError, UnableToAbort, UnknownTransport

log = logging.getLogger("msgspool.web")
PROBLEM_JSON = "application/problem+json"
_PASSED_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class Problem(Exception):
    def __init__(self, status: int, detail: str = "", *, title: str = "", field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field
        self.title = title or phrase(status)
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return problem(self.status, self.title, self.detail, field=self.field, headers=self.headers)


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, title: str, detail: str = "", *, field: str | None = None,
            headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
    body.update(extra or {})
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as err:
        return err.response()
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return _from_http_error(request, err)
    except UnknownTransport as err:
        return problem(404, "Not Found", str(err))
    except NothingToResend as err:
        return problem(409, "Conflict", str(err))
    except NotFound as err:
        return problem(404, "Not Found", f"no message {err}")
    except UnableToAbort as err:  # MAPI_E_UNABLE_TO_ABORT: what was done and what goes on
        return problem(409, "Conflict", str(err), extra=err.detail())
    except SubmitError as err:
        return _refused(err)
    except StorageFull as err:  # RFC 4918 507: nothing was stored; the same request works once there is room
        log.warning("http %s %s: %s", request.method, request.path, err)
        return problem(507, "Insufficient Storage", err.reply.line(), headers={"Retry-After": "60"})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("http %s %s failed", request.method, request.path)
        return problem(500, "Internal Server Error", "the server failed to answer this request; its log says why")


def _from_http_error(request: web.Request, err: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in err.headers.items() if k in _PASSED_HEADERS}
    detail = err.text or ""
    if detail == f"{err.status}: {err.reason}":  # aiohttp's default body says nothing more
        detail = ""
    if err.status == 404 and not detail:
        detail = f"nothing at {request.path}"
    elif err.status == 405:
        detail = f"{request.method} is not allowed on {request.path}; allowed: {headers.get('Allow', 'none')}"
    return problem(err.status, err.reason, detail, headers=headers)


def _refused(err: SubmitError) -> web.Response:
    reply = err.reply
    if reply.enhanced == "5.3.4":
        return problem(413, "Message too large", reply.line())
    if reply.temporary:
        return problem(503, "Message not accepted now", reply.line(), headers={"Retry-After": "60"})
    return problem(422, "Message refused", reply.line())


class _ProblemRequestHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, raises if sent already
        detail = message if status != 500 and message else ""
        response = problem(status, phrase(status), detail)
        if not plain.keep_alive:
            response.force_close()
        return response


class ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed requests with problem documents too."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProblemServer
        return server
