"""Schemathesis over the OpenAPI document (issue 13.1), against a real daemon (`msgspool serve`
on loopback, SQLite spool): for every operation, generated requests, valid and invalid, get an
answer the document declares (status, media type, schema, headers), never a 500, and invalid
ones are refused. Bounded: MAX_EXAMPLES per operation, some hundreds in all, well under a minute.

The SSE stream (GET /api/events) never ends, so its generated requests are sent streaming
(`stream_operation`): the status and media type must be the document's, a refusal a problem
document, and a stream resumed after event 0 must replay the seeded message's events as JSON,
each one of the types the document names."""

from __future__ import annotations

import json
import re
import urllib.request
from email.message import EmailMessage
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from tests.support.daemon import Daemon, run_cli

MAX_EXAMPLES = 12


def seed(base: str, secret: str) -> dict[str, str]:
    """A message with attachments to a local mailbox and one to a remote address (the relay is
    down: it stays deferred), so that the operations on one message also answer 200 with real
    content; the path parameters that name them."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Cc"], mail["Subject"] = "a@localhost", "user@localhost", "far@example.net", "s"
    mail.set_content("text part\n")
    mail.add_alternative("<p>html part</p>\n", subtype="html")
    mail.add_attachment(bytes(range(256)), maintype="application", subtype="octet-stream", filename="b.bin")
    body = {"sender": "a@localhost", "recipients": ["user@localhost", "far@example.net"],
            "content": mail.as_string().replace("\n", "\r\n")}
    request = urllib.request.Request(f"{base}/api/messages", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        created = json.load(answer)
    return {"id": created["id"], "mailbox": "user@localhost", "folder": "inbox", "index": "0",
            "name": "smtp", "address": "far@example.net", "base": base, "secret": secret}


def load(daemon: Daemon) -> Any:
    """The document as the daemon serves it (no token needed), requests sent with an admin token:
    once one exists, a request without it must be refused (401), which the negative cases check."""
    created = run_cli("token", "create", "--scope", "admin", "--name", "schemathesis", data=daemon.data)
    assert created.returncode == 0, created.stderr
    daemon.start(also=[daemon.http_port])
    base = f"http://127.0.0.1:{daemon.http_port}"
    with urllib.request.urlopen(f"{base}/api/openapi.json", timeout=10) as answer:
        document = json.load(answer)
    schema = schemathesis.openapi.from_dict(document)
    secret = created.stdout.strip()
    schema.config.update(base_url=base, headers={"Authorization": f"Bearer {secret}"})
    return schema, seed(base, secret)


CHECKS = [checks.not_a_server_error, openapi_checks.status_code_conformance, openapi_checks.content_type_conformance,
          openapi_checks.response_schema_conformance, openapi_checks.response_headers_conformance]
STREAMED = {("GET", "/api/events")}  # text/event-stream: never ends, read by stream_operation
ANSWERED: set[str] = set()  # the operations that answered 2xx at least once


def run_operation(operation: Any, mode: GenerationMode, path: dict[str, str] | None = None) -> int:
    """Up to MAX_EXAMPLES generated requests of one mode (with these path parameters); how many
    were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        extra = [openapi_checks.negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
        response = case.call_and_validate(checks=CHECKS + extra, timeout=10)
        if response.status_code < 300:
            ANSWERED.add(f"{operation.method.upper()} {operation.path}")

    check()
    return sent


def stream_operation(operation: Any, mode: GenerationMode, seeded: dict[str, str]) -> int:
    """Generated requests to an endless stream: each answered with a documented status and media
    type before its first event, then closed; a positive one resumed after event 0 (the
    Last-Event-ID header) replays stored events at once, `data:` lines of JSON events."""
    sent = 0
    documented = {int(code) for code in operation.definition.raw["responses"] if code.isdigit()}
    kinds = set(operation.definition.raw["responses"]["200"]["content"])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        request = case.as_transport_kwargs()
        with requests.request(**request, stream=True, timeout=10) as response:
            kind = response.headers.get("Content-Type", "").split(";")[0]
            assert response.status_code in documented, (response.status_code, request)
            if response.status_code >= 300:
                assert kind == "application/problem+json" and response.json()["status"] == response.status_code
                return
            assert kind in kinds and response.status_code == 200, (kind, request)
            ANSWERED.add(f"{operation.method.upper()} {operation.path}")

    check()
    if mode is GenerationMode.POSITIVE:
        headers = {"Authorization": f"Bearer {seeded['secret']}", "Last-Event-ID": "0"}
        events = []
        with requests.get(f"{seeded['base']}{operation.path}", headers=headers, stream=True, timeout=10) as response:
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("message_id") == seeded["id"]:
                        break  # the seeded message's first event: replayed at once, not waited for
        assert all(isinstance(e.get("type"), str) for e in events) and events[-1]["message_id"] == seeded["id"]
    return sent


def test_every_operation_answers_as_the_document_says(daemon: Daemon) -> None:
    schema, seeded = load(daemon)
    sent, operations, failures = 0, 0, []
    # Reading ones first, so that they see the seeded message, and what may remove it last.
    every = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: (
        op.method.upper() != "GET", op.path.endswith(("/actions", "/delete", "/requeue"))))
    for operation in every:
        operations += 1
        if (operation.method.upper(), operation.path) in STREAMED:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    sent += stream_operation(operation, mode, seeded)
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE, operation.path
                except Exception as err:
                    failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {err!r}")
            continue
        names = re.findall(r"\{(\w+)\}", operation.path)
        runs: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if names:
            runs.insert(0, (GenerationMode.POSITIVE, {n: seeded[n] for n in names}))
        for mode, path in runs:
            try:
                sent += run_operation(operation, mode, path)
            except Unsatisfiable:  # nothing in it can be invalid (only free strings): no negative case
                assert mode is GenerationMode.NEGATIVE, operation.path
            except Exception as err:  # every operation's failures, not only the first one's
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {err}")
    assert not failures, "\n\n".join(failures)
    print(f"schemathesis: {operations} operations, {sent} requests")
    assert operations >= 25 and sent >= 200, (operations, sent)
    assert {"GET /api/queue/{id}", "GET /api/queue/{id}/parsed", "GET /api/queue/{id}/events",
            "GET /api/queue/{id}/attachments/{index}", "GET /api/mailboxes/{mailbox}/folders/{folder}/messages",
            "POST /api/queue/{id}/hold", "GET /api/status", "GET /api/events"} <= ANSWERED, sorted(ANSWERED)
