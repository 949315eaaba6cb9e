"""POST /api/messages follows the SMTP listener's relay rule, over a real loopback socket, with a
real SMTP sink as the relay: mail for a local domain is taken from any caller allowed to submit;
mail for anywhere else needs a token with the submit scope, or a token-less client in
trusted_networks. A refused relay attempt stores nothing and never reaches the sink."""

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

NOTE = "Subject: x\r\n\r\nhi\r\n"
REMOTE = {"sender": "a@example.org", "recipients": ["victim@example.com"], "content": NOTE}
LOCAL = {"sender": "a@example.org", "recipients": ["bob@example.org"], "content": NOTE}
MIXED = {"sender": "a@example.org", "recipients": ["bob@example.org", "victim@example.com"], "content": NOTE}


@asynccontextmanager
async def api(spooler_factory: SpoolerFactory, sink: Sink, **settings: Any) -> AsyncIterator[tuple[Spooler, str]]:
    port = free_port()
    async with spooler_factory(relay=sink.address, local_domains=["example.org"], **settings) as spooler:
        runner = await start(spooler, "127.0.0.1", port)
        try:
            yield spooler, f"http://127.0.0.1:{port}/api"
        finally:
            await runner.cleanup()


async def submit(base: str, body: dict[str, Any], secret: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/messages", json=body, headers=headers) as response:
        return response.status, json.loads(await response.text())


async def token(spooler: Spooler, capsys: pytest.CaptureFixture[str], scope: str, name: str) -> str:
    args = ["token", "create", "--scope", scope, "--name", name, "--data", str(spooler.settings.spool_path)]
    assert await asyncio.to_thread(cli.main, args) == 0
    return capsys.readouterr().out.strip()


async def never_reaches(sink: Sink, spooler: Spooler) -> None:
    await asyncio.sleep(0.5)  # longer than a delivery to the sink takes
    assert sink.count() == 0
    assert (await spooler.store.counts())["messages"] == 0


@pytest.mark.parametrize("trusted", [[], ["192.0.2.0/24"]])
async def test_without_trust_a_token_less_relay_attempt_is_refused_and_never_reaches_the_sink(
        spooler_factory: SpoolerFactory, sink: Sink, trusted: list[str]) -> None:
    async with api(spooler_factory, sink, trusted_networks=trusted) as (spooler, base):
        for body in (REMOTE, MIXED):
            status, problem = await submit(base, body)
            assert status == 403
            assert problem["title"] == "Relay access denied" and "5.7.1" in problem["detail"]
            assert "victim@example.com" in problem["detail"]
        await never_reaches(sink, spooler)
        # As over SMTP, mail for the local domain is still taken.
        status, created = await submit(base, LOCAL)
        assert status == 201
        assert (await spooler.message(created["id"]))["recipients"][0]["status"] == "delivered"
    assert sink.count() == 0


async def test_a_token_with_the_submit_scope_may_relay_and_is_named_in_the_history(
        spooler_factory: SpoolerFactory, sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    async with api(spooler_factory, sink, trusted_networks=[]) as (spooler, base):
        secret = await token(spooler, capsys, "submit", "billing-app")
        status, created = await submit(base, REMOTE, secret)
        assert status == 201
        await sink.async_wait_for(1)
        shown = await spooler.message(created["id"])
    assert sink.messages[0].recipients == ["victim@example.com"]
    (entry,) = [h for h in shown["history"] if h["stage"] == "submission"]
    assert entry["outcome"] == "submitted" and "billing-app" in entry["detail"]


async def test_a_token_without_the_submit_scope_cannot_submit_at_all(
        spooler_factory: SpoolerFactory, sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    async with api(spooler_factory, sink) as (spooler, base):
        secret = await token(spooler, capsys, "read", "dashboard")
        assert (await submit(base, REMOTE, secret))[0] == 403
        assert (await submit(base, LOCAL, secret))[0] == 403
        await never_reaches(sink, spooler)


async def test_with_the_default_trusted_networks_a_local_client_relays_without_a_token(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    # The `make run` experience: loopback listener, loopback client, no token created yet.
    async with api(spooler_factory, sink) as (spooler, base):
        status, created = await submit(base, REMOTE)
        assert status == 201
        await sink.async_wait_for(1)
        shown = await spooler.message(created["id"])
    assert not [h for h in shown["history"] if h["stage"] == "submission"]  # nobody to name
