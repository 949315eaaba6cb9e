"""The OpenAPI 3.1 document of the HTTP API, made from the route registry (web/routes.py) and the
models (web/models.py): nothing in it is written by hand but the texts of the routes.

Served at GET /api/openapi.json without a token: it says what the README says (the routes and
their shapes), nothing about the spool, and a client needs it before it has a token. The
listener's same-origin checks (web/access.py) still apply to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from msgspool.web.models import Problem
from msgspool.web.problems import PROBLEM_JSON, phrase
from msgspool.web.routes import JSON, Route

REF = "#/components/schemas/{model}"
API_VERSION = "1.0.0"  # of the API, not of the package: routes are added, never renamed
PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADER_TEXT = {
    "Next-Cursor": "the cursor of the next page (absent on the last page)",
    "Link": 'RFC 8288: <URL of the next page>; rel="next"',
    "Retry-After": "seconds to wait before trying again",
}


def common_errors(route: Route) -> list[int]:
    """The errors any route of its kind can give besides its own (web/access.py, web/problems.py)."""
    codes = {421, 500}  # a Host the listener does not answer for; a failure of the server
    if route.scope is not None:
        codes |= {401, 403}
    if route.method in STATE_CHANGING:
        codes |= {403, 415}  # cross-origin; a body not declared JSON (CORS "simple requests")
    if route.query is not None or route.body is not None or PATH_PARAM.search(route.path):
        codes.add(400)
    if PATH_PARAM.search(route.path):
        codes.add(404)  # no such message, transport, mailbox, entry
    if route.body is not None:
        codes.add(413)
    return sorted(codes | set(route.errors))


def document(routes: Sequence[Route]) -> dict[str, Any]:
    schemas = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    components = {"schemas": schemas.pop("$defs"), "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "msgspool token create --scope read|submit|admin|metrics (RFC 6750)"}}}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {"title": "msgspool HTTP API", "version": API_VERSION,
                 "description": "The spooler's HTTP API (msgspool serve --http). Every path under /api/ is"
                                " also served under /api/v1/, the same. Every error is an RFC 9457"
                                " problem document. Lists page by cursor: ?limit=N&cursor=C, the next page's"
                                " cursor in next_cursor (or the Next-Cursor header)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": components,
        "tags": [{"name": tag} for tag in sorted({r.tag for r in routes})],
    }


def _key(route: Route, part: str) -> tuple[str, str, str]:
    return route.method, route.path, part


def _schemas(routes: Sequence[Route]) -> dict[Any, Any]:
    """The JSON Schemas of every model in the routes, their definitions under $defs."""
    inputs: list[tuple[Any, JsonSchemaMode, TypeAdapter[Any]]] = [("problem", "serialization", TypeAdapter(Problem))]
    for route in routes:
        if route.answer is not None:
            inputs.append((_key(route, "answer"), "serialization", TypeAdapter(route.answer)))
        if route.body is not None:
            inputs.append((_key(route, "body"), "validation", TypeAdapter(route.body)))
        if route.query is not None:
            inputs.append((_key(route, "query"), "validation", TypeAdapter(route.query)))
    found, top = TypeAdapter.json_schemas(inputs, ref_template=REF)
    out: dict[Any, Any] = {key: schema for (key, _mode), schema in found.items()}
    out["$defs"] = top.get("$defs", {})
    return out


def _operation(route: Route, schemas: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": _operation_id(route), "summary": route.summary, "tags": [route.tag]}
    if route.description:
        op["description"] = route.description
    op["security"] = [] if route.scope is None else [{"bearer": []}]
    if route.scope is not None:
        op["x-scope"] = route.scope
    parameters = [_path_parameter(route, name) for name in PATH_PARAM.findall(route.path)]
    if route.query is not None:
        parameters += _query_parameters(route.query, schemas[_key(route, "query")], schemas["$defs"])
    if parameters:
        op["parameters"] = parameters
    if route.body is not None or route.method in STATE_CHANGING:
        # A state-changing request must say Content-Type: application/json even when it has
        # nothing to send (web/access.py: a page may send a bodiless POST across origins), so the
        # document asks for a body always: {} will do where the route takes none.
        body_schema = schemas[_key(route, "body")] if route.body is not None else {}  # any JSON: unread
        content: dict[str, Any] = {}
        for media in route.body_types:
            content[media] = {"schema": body_schema if media == JSON else {"type": "string"}}
        op["requestBody"] = {"required": True, "content": content,
                             "description": "Content-Type: application/json always; {} where nothing is asked"}
    op["responses"] = _responses(route, schemas)
    return op


def _operation_id(route: Route) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", route.path.replace("{", "by_").replace("}", "")) if w]
    return "_".join([route.method.lower(), *(words[1:] if words[:1] == ["api"] else words)])


def _path_parameter(route: Route, name: str) -> dict[str, Any]:
    kind = route.path_types.get(name, str)
    schema: dict[str, Any] = {"type": "integer", "minimum": 0} if kind is int else {"type": "string", "minLength": 1}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_parameters(model: type[BaseModel], schema: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    if "$ref" in schema:  # the model's own schema is among the definitions
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    out = []
    for name, info in model.model_fields.items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": _not_null(props[name])}
        if info.description:
            param["description"] = info.description
        if param["schema"].get("type") == "array":
            param.update(style="form", explode=True)
        out.append(param)
    return out


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value: never JSON null, which a query string cannot say."""
    branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
    if len(branches) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**rest, **branches[0]}


def _responses(route: Route, schemas: dict[Any, Any]) -> dict[str, Any]:
    headers = {h: {"description": HEADER_TEXT.get(h, h), "schema": {"type": "string"}} for h in route.headers}
    ok: dict[str, Any] = {"description": phrase(route.status)}
    if route.answer is not None:
        ok["content"] = {JSON: {"schema": schemas[_key(route, "answer")]}}
    elif route.produces == JSON:  # made by hand (this document): an object
        ok["content"] = {JSON: {"schema": {"type": "object"}}}
    elif route.produces:
        ok["content"] = {route.produces: {"schema": {"type": "string", "contentMediaType": route.produces}}}
    if headers:
        ok["headers"] = headers
    responses: dict[str, Any] = {str(route.status): ok}
    problem = {PROBLEM_JSON: {"schema": schemas["problem"]}}
    for code in common_errors(route):
        responses[str(code)] = {"description": phrase(code), "content": problem}
    return responses
