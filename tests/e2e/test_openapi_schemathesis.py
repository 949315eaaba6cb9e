"""Schemathesis over the OpenAPI document (issue 13.1), against a real daemon (`msgspool serve`
on loopback, SQLite spool): for every operation, generated requests, valid and invalid, get an
answer the document declares (status, media type, schema, headers), never a 500, and invalid
ones are refused. Bounded: MAX_EXAMPLES per operation, some hundreds in all, well under a minute.

The SSE stream (GET /api/events) is left out: it never ends, so no answer could be checked; its
replay is the same store read as GET /api/events/log, which is in."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from tests.support.daemon import Daemon, run_cli

MAX_EXAMPLES = 12


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
    schema.config.update(base_url=base, headers={"Authorization": f"Bearer {created.stdout.strip()}"})
    return schema


CHECKS = [checks.not_a_server_error, openapi_checks.status_code_conformance, openapi_checks.content_type_conformance,
          openapi_checks.response_schema_conformance, openapi_checks.response_headers_conformance]
SKIPPED = {("GET", "/api/events")}


def run_operation(operation: Any, mode: GenerationMode) -> int:
    """Up to MAX_EXAMPLES generated requests of one mode; how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        extra = [openapi_checks.negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
        case.call_and_validate(checks=CHECKS + extra, timeout=10)

    check()
    return sent


def test_every_operation_answers_as_the_document_says(daemon: Daemon) -> None:
    schema = load(daemon)
    sent, operations, failures = 0, 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                sent += run_operation(operation, mode)
            except Unsatisfiable:  # nothing in it can be invalid (only free strings): no negative case
                assert mode is GenerationMode.NEGATIVE, operation.path
            except Exception as err:  # every operation's failures, not only the first one's
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {err}")
    assert not failures, "\n\n".join(failures)
    print(f"schemathesis: {operations} operations, {sent} requests")
    assert operations >= 25 and sent >= 200, (operations, sent)
