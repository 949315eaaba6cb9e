"""The OpenAPI document and the aiohttp routes come from one registry (web/routes.py): every route
is in the document and every operation of the document is a route; every error is declared as a
problem document; the answer models name every field views.py writes (no drift either way)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import TypeAdapter

from msgspool.domain.message import MessageInfo
from msgspool.domain.suppression import Suppression
from msgspool.spooler.runtime import Spooler
from msgspool.views import message_json, suppression_json
from msgspool.web import dashboard, models, openapi
from msgspool.web.app import api_routes, make_app
from msgspool.web.submission import submission
from tests.conftest import make_settings

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    return make_app(Spooler(make_settings(tmp_path / "spool")))  # never started: no files, no sockets


def document() -> dict[str, Any]:
    return openapi.document(api_routes())


def test_every_aiohttp_route_is_in_the_document_and_every_operation_is_a_route(app: web.Application) -> None:
    pages = {(r.method.lower(), r.path) for r in dashboard.page_routes()}  # the dashboard's: not API operations
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None} - pages
    assert all(not path.startswith("/api/") for _method, path in pages)
    described = {(method, path) for path, item in document()["paths"].items() for method in item if method in METHODS}
    v1 = {(m, p) for m, p in served if p.startswith("/api/v1/")}
    assert served - v1 == described
    assert v1 == {(m, "/api/v1/" + p.removeprefix("/api/")) for m, p in described if p.startswith("/api/")}
    assert ("get", "/api/queue/{id}/content") in served and ("get", "/api/openapi.json") in served


def test_the_document_is_openapi_3_1_with_every_path_parameter_and_error_declared() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs <= set(doc["components"]["schemas"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            names = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert names == set(re.findall(r"\{(\w+)\}", path)), (method, path)
            errors = {code: r for code, r in op["responses"].items() if int(code) >= 400}
            assert {"500", "421"} <= set(errors), (method, path)
            for code, answer in errors.items():
                assert answer["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, code)
            if op["security"]:
                assert {"401", "403"} <= set(errors), (method, path)
    assert doc["paths"]["/api/openapi.json"]["get"]["security"] == []  # readable without a token
    assert set(doc["paths"]["/api/messages"]["post"]["requestBody"]["content"]) == {
        "application/json", "message/rfc822"}


def info(**history: Any) -> MessageInfo:
    recipient = {"address": "b@example.com", "addrtype": "SMTP", "type": "to", "transport": "smtp",
                 "destination": "example.com", "status": "deferred", "attempts": 1, "next_attempt_at": 2.0,
                 "last_attempt_at": 1.0, "last_reply": "451 4.3.0 later", "relay": None, "notify": None,
                 "orcpt": None}
    return MessageInfo(id="M1", mailbox="", folder="outbox", sender="a@example.org", size=10, submitted_at=1.0,
                       finished_at=None, message_class="IPM.Note", priority=0, deliver_after=None, expires_at=None,
                       held=False, origin="http", recipients=[recipient],
                       history=[{"time": 1.0, "stage": "hold", "hook": None, "outcome": "held", "detail": None}],
                       resends=[], copies=[{"id": "M2", "mailbox": "b@example.org", "folder": "inbox",
                                            "recipient": "b@example.org"}], **history)


def test_the_answer_models_name_exactly_the_fields_views_writes() -> None:
    shown = message_json(info())
    assert set(shown) == set(models.MessageView.model_fields)
    assert set(shown["recipients"][0]) == set(models.RecipientView.model_fields)
    assert set(shown["history"][0]) == set(models.HistoryEntry.model_fields)
    entry = suppression_json(Suppression("b@example.com", "bounced", 1.0, None, "bounce", "M1"))
    assert set(entry) == set(models.SuppressionView.model_fields)
    adapter = TypeAdapter(models.MessageView)  # and their types agree: what goes out is what views made
    assert adapter.dump_python(adapter.validate_python(shown), mode="json", exclude_unset=True) == shown


def test_every_member_of_the_submit_model_is_one_the_handler_takes() -> None:
    body = {"sender": "a@example.org", "recipients": ["b@example.com"], "content": "Subject: x\r\n\r\nhi\r\n",
            "addrtypes": ["SMTP"], "types": ["cc"], "mailbox": "a@example.org", "message_class": "IPM.Note.Test",
            "priority": "urgent", "deliver_after": "2030-01-01T00:00:00Z", "expires_at": 1.9e9, "max_attempts": 3}
    assert set(body) == set(models.Submit.model_fields)
    models.Submit.model_validate(body)
    sub = submission(body)
    assert (sub.types, sub.mailbox, sub.message_class, sub.max_attempts) == (["cc"], "a@example.org",
                                                                              "IPM.Note.Test", 3)
