"""Bad input over the HTTP API gets a clear 4xx problem document (RFC 9457) and breaks nothing:
out-of-range times, priorities and attempt caps are refused before they are stored, and a time
out of range that is already in a store (an older msgspool let it in) is shown clamped by
GET /api/queue, `queue list --json` and `queue show`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from msgspool import cli
from msgspool.spooler.runtime import Spooler
from msgspool.stores.sqlite import DB_NAME
from msgspool.web.app import start
from tests.conftest import SpoolerFactory, sqlite_only
from tests.support.sink import Sink, free_port

PROBLEM = "application/problem+json"
GOOD = {"sender": "a@example.org", "recipients": ["b@example.com"], "content": "Subject: x\r\n\r\nhi\r\n"}


@pytest.fixture
async def api(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[tuple[Spooler, str]]:
    port = free_port()
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        runner = await start(spooler, "127.0.0.1", port)
        try:
            yield spooler, f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


async def problem_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.content_type == PROBLEM, (response.status, await response.text())
    body: dict[str, Any] = json.loads(await response.text())
    assert body["status"] == response.status and body["title"]
    return body


@pytest.mark.parametrize(("field", "value"), [
    ("deliver_after", 1e300), ("deliver_after", -1), ("deliver_after", "10000-01-01T00:00:00Z"),
    ("deliver_after", 253402300800), ("expires_at", 1e300), ("expires_at", -5.5),
    ("priority", 7), ("priority", 10**30), ("priority", "soon"), ("max_attempts", -1), ("max_attempts", 10**30),
])
async def test_an_out_of_range_value_is_a_422_naming_the_field_and_nothing_is_stored(
        api: tuple[Spooler, str], field: str, value: Any) -> None:
    spooler, base = api
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{base}/api/messages", json={**GOOD, field: value})
        body = await problem_of(response)
        listed = await http.get(f"{base}/api/queue")
        assert listed.status == 200
        assert await listed.json() == []
    assert response.status == 422
    assert field in body["detail"] and body.get("field") == field
    assert (await spooler.store.counts()).get("queued", 0) == 0


async def test_nan_and_infinity_are_refused_too(api: tuple[Spooler, str]) -> None:
    # Python's JSON reader takes NaN and Infinity, which no JSON document should hold.
    _spooler, base = api
    async with aiohttp.ClientSession() as http:
        for literal in ("NaN", "Infinity", "-Infinity"):
            text = json.dumps(GOOD)[:-1] + f', "deliver_after": {literal}}}'
            response = await http.post(f"{base}/api/messages", data=text,
                                       headers={"Content-Type": "application/json"})
            body = await problem_of(response)
            assert response.status in (400, 422) and "deliver_after" in body["detail"]


@pytest.mark.parametrize(("payload", "words"), [
    ("[1, 2]", "JSON object"), ('"text"', "JSON object"), ("{", "JSON"), ("", "JSON"),
    ('{"sender": "a@example.org", "content": "x"}', "recipients"),
    ('{"sender": "a@example.org", "recipients": "b@example.com", "content": "x"}', "recipients"),
    ('{"sender": "a@example.org", "recipients": [1], "content": "x"}', "recipients"),
    ('{"sender": 5, "recipients": ["b@example.com"], "content": "x"}', "sender"),
    ('{"sender": "a@example.org", "recipients": ["b@example.com"], "content": {"a": 1}}', "content"),
    ('{"sender": "a@example.org", "recipients": ["b@example.com"]}', "content"),
    ('{"sender": "a@example.org", "recipients": ["b@example.com"], "content": "x", "addrtypes": 3}', "addrtypes"),
    ('{"sender": "a@example.org", "recipients": ["b@example.com"], "content": "x", "max_attempts": 1.5}',
     "max_attempts"),
])
async def test_a_malformed_submission_is_a_400_in_the_apis_own_words(api: tuple[Spooler, str], payload: str,
                                                                    words: str) -> None:
    _spooler, base = api
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{base}/api/messages", data=payload, headers={"Content-Type": "application/json"})
        body = await problem_of(response)
    assert response.status == 400
    assert words in body["detail"]
    for internal in ("object has no attribute", "Traceback", "KeyError", "Expecting value", "NoneType", "'list'"):
        assert internal not in body["detail"]


async def test_every_error_of_the_api_is_a_problem_document(api: tuple[Spooler, str]) -> None:
    spooler, base = api
    big = {**GOOD, "content": "x" * (spooler.settings.message_size_limit + 1024)}
    async with aiohttp.ClientSession() as http:
        cases = [
            (404, await http.get(f"{base}/api/nosuch")),
            (404, await http.get(f"{base}/nosuch")),
            (404, await http.get(f"{base}/api/queue/NOSUCH")),
            (405, await http.put(f"{base}/api/messages", json=GOOD)),
            (405, await http.delete(f"{base}/api/status")),
            (400, await http.get(f"{base}/api/queue", params={"limit": "many"})),
            (400, await http.get(f"{base}/api/events", params={"types": "nosuch"})),
            (413, await http.post(f"{base}/api/messages", json=big)),
            (415, await http.post(f"{base}/api/messages", data=json.dumps(GOOD),
                                  headers={"Content-Type": "text/plain"})),
            (422, await http.post(f"{base}/api/messages", json={**GOOD, "recipients": []})),
            # a bad body is refused even where the query names the same term (schemathesis found it)
            (400, await http.post(f"{base}/api/queue/flush", params={"destination": "mx.example"},
                                  json={"destination": 5})),
        ]
        for status, response in cases:
            assert response.status == status, (status, response.url, await response.text())
            await problem_of(response)
        allow = cases[3][1].headers.get("Allow", "")
    assert "POST" in allow


async def test_an_unexpected_failure_is_a_500_problem_document(api: tuple[Spooler, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spooler, base = api

    async def broken() -> dict[str, int]:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(spooler.store, "counts", broken)
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{base}/api/status")
        body = await problem_of(response)
    assert response.status == 500
    assert "fire" not in json.dumps(body)  # no internals leak to the client


def poison(data_dir: Path, message_id: str) -> None:
    """What an older msgspool could store: times no calendar holds."""
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        conn.execute("UPDATE messages SET deliver_after = 1e300, expires_at = -1e300 WHERE id = ?", (message_id,))
        conn.execute("UPDATE recipients SET next_attempt_at = 1e300, last_attempt_at = -1e20 WHERE message_id = ?",
                     (message_id,))


@sqlite_only  # an older msgspool's spool is an SQLite file
async def test_a_stored_time_out_of_range_is_shown_clamped_everywhere(
        api: tuple[Spooler, str], capsys: pytest.CaptureFixture[str]) -> None:
    spooler, base = api
    message_id = await spooler.send(GOOD["content"].encode(), sender="a@example.org", recipients=["b@example.com"],
                                    deliver_after=4_000_000_000.0)
    poison(spooler.settings.spool_path, message_id)
    async with aiohttp.ClientSession() as http:
        listed = await http.get(f"{base}/api/queue")
        shown = await http.get(f"{base}/api/queue/{message_id}")
        assert (listed.status, shown.status) == (200, 200)
        (item,) = await listed.json()
        one = await shown.json()
    assert item["deliver_after"] == one["deliver_after"] == "9999-12-31T23:59:59.000Z"
    assert item["expires_at"] == "1970-01-01T00:00:00.000Z"
    assert item["recipients"][0]["next_attempt_at"] == "9999-12-31T23:59:59.000Z"
    data = str(spooler.settings.spool_path)
    assert await asyncio.to_thread(cli.main, ["queue", "list", "--json", "--data", data]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == message_id
    assert await asyncio.to_thread(cli.main, ["queue", "show", message_id, "--json", "--data", data]) == 0
    assert json.loads(capsys.readouterr().out)["deliver_after"] == "9999-12-31T23:59:59.000Z"
    assert await asyncio.to_thread(cli.main, ["queue", "show", message_id, "--data", data]) == 0
    assert await asyncio.to_thread(cli.main, ["queue", "list", "--data", data]) == 0
    assert message_id in capsys.readouterr().out


async def test_a_request_aiohttp_cannot_parse_is_answered_with_a_problem_document_too(
        api: tuple[Spooler, str]) -> None:
    port = int(api[1].rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"x" * 20000 + b"\r\n\r\n")
    await writer.drain()
    head, _, body = (await asyncio.wait_for(reader.read(65536), 5)).partition(b"\r\n\r\n")
    writer.close()
    assert head.split()[1].startswith(b"4")
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == int(head.split()[1])


@pytest.mark.parametrize(("field", "value"), [
    ("recipients", ["b\x7f@example.com"]), ("recipients", ["b@exam\x1bple.com"]),
    ("recipients", ["b\u0085@example.com"]), ("recipients", ["b\ud800@example.com"]),
    ("sender", "a\x00@example.org"), ("sender", "a\r\n@example.org"),
])
async def test_a_control_character_in_an_address_is_refused_and_nothing_is_stored(
        api: tuple[Spooler, str], sink: Sink, field: str, value: Any) -> None:
    spooler, base = api
    text = json.dumps({**GOOD, field: value})  # \\u escapes: the characters arrive as JSON allows them
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{base}/api/messages", data=text, headers={"Content-Type": "application/json"})
        body = await problem_of(response)
    assert response.status == 422 and "address" in body["detail"]
    assert (await spooler.store.counts())["messages"] == 0


async def test_content_with_a_lone_surrogate_is_a_400_not_a_crash(api: tuple[Spooler, str]) -> None:
    _spooler, base = api
    text = json.dumps({**GOOD, "content": "Subject: x\r\n\r\n\ud800\r\n"})
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{base}/api/messages", data=text, headers={"Content-Type": "application/json"})
        body = await problem_of(response)
        odd = await http.post(f"{base}/api/messages", json={**GOOD, "addrtypes": ["SM\nTP"]})
        odd_body = await problem_of(odd)
    assert response.status == 400 and body["field"] == "content"
    assert odd.status == 400 and odd_body["field"] == "addrtypes"


async def test_a_last_event_id_too_large_for_the_store_starts_the_stream_live(api: tuple[Spooler, str]) -> None:
    spooler, base = api
    async with aiohttp.ClientSession() as http:
        stream = await http.get(f"{base}/api/events", headers={"Last-Event-ID": "9" * 30})
        assert stream.status == 200
        await spooler.send(b"Subject: x\r\n\r\nhi\r\n", sender="a@example.org", recipients=["bob@example.org"])
        line = b":"
        while line and not line.startswith(b"event:"):  # b"": the stream ended
            line = await asyncio.wait_for(stream.content.readline(), 5)
        stream.close()
    assert line.strip() == b"event: submitted"


@pytest.mark.parametrize("limit", ["-1", "1" * 30, "1e3", "100001"])
async def test_a_listing_limit_out_of_range_is_a_400(api: tuple[Spooler, str], limit: str) -> None:
    _spooler, base = api
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{base}/api/queue", params={"limit": limit})
        body = await problem_of(response)
    assert response.status == 400 and body["field"] == "limit"
