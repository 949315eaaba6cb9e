"""A web page in the operator's browser must not drive the HTTP API: over real loopback sockets,
the requests a hostile page can make (a cross-origin text/plain POST, a foreign Origin, a DNS
rebinding Host) are refused, and none of them submits or changes anything."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from msgspool import cli
from msgspool.spooler.runtime import Spooler
from msgspool.web.app import start
from tests.conftest import SpoolerFactory
from tests.support.sink import Sink, free_port

GOOD = {"sender": "a@example.org", "recipients": ["b@example.com"], "content": "Subject: x\r\n\r\nhi\r\n"}


class Api:
    def __init__(self, spooler: Spooler, port: int) -> None:
        self.spooler, self.port = spooler, port
        self.base = f"http://127.0.0.1:{port}/api"

    async def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                      data: str | bytes | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, \
                http.request(method, f"{self.base}{path}", headers=headers or {}, data=data) as response:
            text = await response.text()
            if response.status >= 400:
                assert response.content_type == "application/problem+json", text
            return response.status, json.loads(text) if text else None


@asynccontextmanager
async def serving(spooler: Spooler, host: str = "127.0.0.1") -> AsyncIterator[Api]:
    port = free_port()
    runner = await start(spooler, host, port)
    try:
        yield Api(spooler, port)
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[Api]:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"],
                               http_hosts=["mail.example.org"]) as spooler, serving(spooler) as served:
        yield served


JSON = {"Content-Type": "application/json"}


async def nothing_submitted(api: Api, sink: Sink) -> None:
    await asyncio.sleep(0.2)
    assert (await api.spooler.store.counts())["messages"] == 0
    assert sink.count() == 0


async def test_a_cross_origin_text_plain_post_is_refused_and_sends_nothing(api: Api, sink: Sink) -> None:
    # What <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) from evil.example sends.
    status, body = await api.request("POST", "/messages", data=json.dumps(GOOD), headers={
        "Content-Type": "text/plain", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "Origin" in body["detail"]
    await nothing_submitted(api, sink)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_a_state_changing_request_must_be_declared_json(api: Api, sink: Sink, content_type: str | None) -> None:
    message_id = await api.spooler.send(GOOD["content"].encode(), sender="a@example.org",
                                        recipients=["b@example.org"])
    headers = {"Content-Type": content_type} if content_type else {}
    sent = await api.request("POST", "/messages", data=json.dumps(GOOD).encode(), headers=headers)
    deleted = await api.request("POST", f"/queue/{message_id}/delete", data=b"{}", headers=headers)
    flushed = await api.request("POST", "/queue/flush", headers=headers)
    assert [sent[0], deleted[0], flushed[0]] == [415, 415, 415]
    assert "application/json" in sent[1]["detail"]
    assert (await api.spooler.message(message_id))["id"] == message_id  # still there
    assert (await api.request("POST", f"/queue/{message_id}/delete", data=b"{}", headers=JSON))[0] == 200
    assert (await api.request("POST", "/queue/flush", headers=JSON))[0] == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "http://localhost:{port}",
                                    "file://", "http://127.0.0.1.evil.example:{port}"])
async def test_a_foreign_origin_is_refused_on_every_request(api: Api, sink: Sink, origin: str) -> None:
    headers = {"Origin": origin.format(port=api.port)}
    assert (await api.request("GET", "/queue", headers=headers))[0] == 403
    assert (await api.request("GET", "/status", headers=headers))[0] == 403
    assert (await api.request("POST", "/messages", data=json.dumps(GOOD), headers={**headers, **JSON}))[0] == 403
    await nothing_submitted(api, sink)


async def test_the_apis_own_origin_is_served(api: Api) -> None:
    own = {"Origin": f"http://127.0.0.1:{api.port}", "Sec-Fetch-Site": "same-origin"}
    assert (await api.request("GET", "/status", headers=own))[0] == 200
    assert (await api.request("POST", "/messages", data=json.dumps(GOOD), headers={**own, **JSON}))[0] == 201
    local = {"Host": f"localhost:{api.port}", "Origin": f"http://localhost:{api.port}"}
    assert (await api.request("GET", "/status", headers=local))[0] == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_sec_fetch_site_from_another_site_is_refused(api: Api, site: str) -> None:
    assert (await api.request("GET", "/status", headers={"Sec-Fetch-Site": site}))[0] == 403
    assert (await api.request("GET", "/status", headers={"Sec-Fetch-Site": "none"}))[0] == 200


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1.nip.io:{port}", "10.0.0.1:{port}",
                                  "localhost.evil.example:{port}"])
async def test_a_host_that_is_not_the_listener_is_refused_421(api: Api, sink: Sink, host: str) -> None:
    # DNS rebinding: evil.example now resolves to 127.0.0.1, so the page's requests are "same-origin".
    headers = {"Host": host.format(port=api.port)}
    status, body = await api.request("GET", "/queue", headers=headers)
    assert status == 421 and "Host" in body["detail"]
    origin = f"http://{headers['Host']}"
    assert (await api.request("POST", "/messages", data=json.dumps(GOOD),
                              headers={**headers, **JSON, "Origin": origin}))[0] == 421
    await nothing_submitted(api, sink)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "127.0.0.1",
                                  "mail.example.org", "MAIL.example.org:{port}"])
async def test_the_listeners_own_names_are_served(api: Api, host: str) -> None:
    assert (await api.request("GET", "/status", headers={"Host": host.format(port=api.port)}))[0] == 200


async def test_a_token_does_not_lift_the_browser_checks(api: Api, sink: Sink,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["token", "create", "--scope", "admin", "--data", str(api.spooler.settings.spool_path)]
    assert await asyncio.to_thread(cli.main, args) == 0
    auth = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
    assert (await api.request("GET", "/status", headers=auth))[0] == 200
    assert (await api.request("GET", "/status", headers={**auth, "Origin": "http://evil.example"}))[0] == 403
    assert (await api.request("GET", "/status", headers={**auth, "Host": "evil.example"}))[0] == 421
    assert (await api.request("POST", "/messages", data=json.dumps(GOOD),
                              headers={**auth, "Content-Type": "text/plain"}))[0] == 415
    await nothing_submitted(api, sink)


async def test_a_listener_on_every_interface_takes_ip_literals_but_no_foreign_name(
        spooler_factory: SpoolerFactory, capsys: pytest.CaptureFixture[str]) -> None:
    async with spooler_factory() as spooler:
        args = ["token", "create", "--scope", "read", "--data", str(spooler.settings.spool_path)]
        assert await asyncio.to_thread(cli.main, args) == 0
        auth = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
        async with serving(spooler, "0.0.0.0") as api:
            assert (await api.request("GET", "/status", headers=auth))[0] == 200
            assert (await api.request("GET", "/status", headers={**auth, "Host": f"192.0.2.7:{api.port}"}))[0] == 200
            assert (await api.request("GET", "/status", headers={**auth, "Host": f"evil.example:{api.port}"}))[0] == 421
