"""The route registry: every endpoint of the HTTP API declared once (method, path, summary, the
token scope it needs, its query and body models, its answer's model, the errors it can give), from
which both the aiohttp routes (`install`) and the OpenAPI 3.1 document (web/openapi.py) are made,
so that the two cannot drift (tests/unit/test_openapi.py checks that every aiohttp route is in the
document and the other way round).

A handler takes the request and returns either the data of its answer (checked against the
route's `answer` model, strictly, before it is written: the document's schema is what goes out), an
`Answered` (the same with headers), or an aiohttp response of its own (a stream, raw content).
Its query string has been checked against the route's `query` model before it runs: `params`
hands it over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_json

from msgspool.web.problems import Problem

Handler = Callable[[web.Request], Awaitable[Any]]
JSON = "application/json"
M = TypeVar("M", bound=BaseModel)
SAMPLE = 100


@dataclass(frozen=True)
class Answered:
    """An answer's data with response headers (a page's `Link` and `Next-Cursor`)."""

    data: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as aiohttp takes it and OpenAPI writes it: /api/queue/{id}
    handler: Handler
    summary: str
    scope: str | None  # the token scope needed (web/access.py); None: anyone who reaches the listener
    answer: Any = None  # the type of the JSON answer; None: the handler makes its own response
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None  # the JSON body (POST, DELETE with one)
    body_types: tuple[str, ...] = (JSON,)  # the media types the body may have
    produces: str = JSON  # the answer's media type when `answer` is None
    errors: tuple[int, ...] = ()  # the route's own error statuses (web/openapi.py adds the common ones)
    headers: tuple[str, ...] = ()  # response headers the answer may carry
    path_types: Mapping[str, type] = field(default_factory=dict)  # path parameters other than strings
    tag: str = "queue"
    description: str = ""


QUERY: web.RequestKey[BaseModel] = web.RequestKey("query", BaseModel)
ROUTES: web.AppKey[dict[AbstractRoute, Route]] = web.AppKey("routes", dict)


def params(request: web.Request, model: type[M]) -> M:
    """The request's query, as its route's `query` model checked it."""
    value = request[QUERY]
    assert isinstance(value, model), f"route declares {type(value).__name__}, handler asks {model.__name__}"
    return value


def check_query(model: type[M], request: web.Request) -> M:
    query: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        query[key] = values if _is_list(model, key) else values[-1]
    try:
        return model.model_validate(query)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else None
        raise Problem(400, f"{name}: {first['msg']}" if name else first["msg"], field=name) from err


def _is_list(model: type[BaseModel], key: str) -> bool:
    info = model.model_fields.get(key)
    return info is not None and "list" in str(info.annotation)


def sample(data: Any) -> Any:
    """What of an answer is checked against its model: all of it, but of a long list (a page of
    1000 messages) its first SAMPLE items. Each item of a list is made by the same function
    (views.py), so they share their shape; checking every one would cost four times the writing
    (about 45 us a message) in the event loop that also takes mail. The schemathesis test checks
    whole answers against the document."""
    if isinstance(data, list):
        return data[:SAMPLE]
    if isinstance(data, dict):
        return {k: v[:SAMPLE] if isinstance(v, list) else v for k, v in data.items()}
    return data


def endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    adapter: TypeAdapter[Any] | None = TypeAdapter(route.answer) if route.answer is not None else None

    async def handle(request: web.Request) -> web.StreamResponse:
        if route.query is not None:
            request[QUERY] = check_query(route.query, request)
        result = await route.handler(request)
        if isinstance(result, web.StreamResponse):
            return result
        headers: Mapping[str, str] = {}
        if isinstance(result, Answered):
            result, headers = result.data, result.headers
        assert adapter is not None, f"{route.method} {route.path} declares no answer model"
        adapter.validate_python(sample(result), strict=True)  # else a ValidationError: a 500, which tests see
        return web.Response(body=to_json(result), status=route.status, content_type=JSON, headers=headers)

    return handle


API, V1 = "/api/", "/api/v1/"


def versioned(path: str) -> str | None:
    """The /api/v1/ twin of an /api/ path (None for others, such as /metrics)."""
    return V1 + path.removeprefix(API) if path.startswith(API) else None


def install(app: web.Application, routes: list[Route]) -> None:
    """Add the routes to the app, each /api/ one also under /api/v1/ (the same route: v1 is what
    /api/ serves; a v2 would get a prefix of its own). GET ones answer HEAD too, as add_get does."""
    table = app.get(ROUTES)
    if table is None:
        table = app[ROUTES] = {}
    for route in routes:
        handler = endpoint(route)
        for path in filter(None, (route.path, versioned(route.path))):
            table[app.router.add_route(route.method, path, handler)] = route
            if route.method == "GET":
                table[app.router.add_route("HEAD", path, handler)] = route


def declared(request: web.Request) -> Route | None:
    """The route a request matched, as the registry declares it (None: not one of the registry's)."""
    table = request.app.get(ROUTES) or {}
    return table.get(request.match_info.route)
