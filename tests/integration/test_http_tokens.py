"""Bearer tokens on the HTTP API, over real loopback sockets with a real SQLite spool: tokens made
by `msgspool token create` (run in this process), scopes checked per request, the loopback rule
that serves token-less requests only while no token exists, and `serve` refusing a listener open
to other hosts without a token."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from msgspool import cli
from msgspool.spooler.runtime import Spooler
from msgspool.web.app import start
from tests.conftest import STORE_UNDER_TEST, SpoolerFactory
from tests.support import pg
from tests.support.daemon import run_cli
from tests.support.sink import Sink, free_port

GOOD = {"sender": "a@example.org", "recipients": ["b@example.org"], "content": "Subject: x\r\n\r\nhi\r\n"}
Api = tuple[Spooler, str]
JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def serving(spooler: Spooler, host: str = "127.0.0.1") -> AsyncIterator[str]:
    port = free_port()
    runner = await start(spooler, host, port)
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[Api]:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler, \
            serving(spooler) as base:
        yield spooler, base


async def token(spooler: Spooler, capsys: pytest.CaptureFixture[str], *scopes: str, name: str | None = None) -> str:
    """`msgspool token create`, as an operator runs it (in a thread: the daemon's loop must go on
    committing meanwhile); returns the secret it printed."""
    args = ["token", "create", "--data", str(spooler.settings.spool_path)]
    for scope in scopes:
        args += ["--scope", scope]
    assert await asyncio.to_thread(cli.main, args + (["--name", name] if name else [])) == 0
    return capsys.readouterr().out.strip()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def call(method: str, url: str, secret: str | None = None, *, headers: dict[str, str] | None = None,
               **kw: Any) -> tuple[int, dict[str, str], Any]:
    sent = {**(bearer(secret) if secret else {}), **(headers or {})}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=sent, **kw) as response:
        text = await response.text()
        body = json.loads(text) if text else None
        if response.status >= 400:
            assert response.content_type == "application/problem+json", text
        return response.status, dict(response.headers), body


async def test_without_any_token_a_loopback_listener_serves_trusted_clients(api: Api) -> None:
    _spooler, base = api
    assert (await call("GET", f"{base}/status"))[0] == 200
    assert (await call("POST", f"{base}/messages", json=GOOD))[0] == 201


async def test_once_a_token_exists_a_request_without_one_gets_401_bearer(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    spooler, base = api
    await token(spooler, capsys, "read")
    for method, path, kw in (("GET", "/status", {}), ("GET", "/queue", {}), ("POST", "/messages", {"json": GOOD}),
                             ("POST", "/queue/flush", {"headers": JSON}), ("GET", "/events", {})):
        status, headers, body = await call(method, f"{base}{path}", **kw)
        assert status == 401, (method, path)
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert body["status"] == 401 and "token" in body["detail"]
    assert (await spooler.store.counts())["messages"] == 0


@pytest.mark.parametrize("presented", [
    "msgspool_000000000000_" + "A" * 43,  # shaped like one, unknown id
    "nonsense", "",
])
async def test_an_unknown_or_malformed_token_gets_401(api: Api, capsys: pytest.CaptureFixture[str],
                                                      presented: str) -> None:
    spooler, base = api
    await token(spooler, capsys, "admin")
    status, headers, _ = await call("GET", f"{base}/status", headers={"Authorization": f"Bearer {presented}"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_known_id_with_a_wrong_secret_gets_401(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    spooler, base = api
    secret = await token(spooler, capsys, "admin")
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    status, headers, _ = await call("GET", f"{base}/status", forged)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert (await call("GET", f"{base}/status", secret))[0] == 200


async def test_basic_auth_is_not_a_bearer_token(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    spooler, base = api
    secret = await token(spooler, capsys, "admin")
    assert (await call("GET", f"{base}/status", headers={"Authorization": f"Basic {secret}"}))[0] == 401


async def test_each_scope_allows_its_requests_and_admin_all(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    spooler, base = api
    read, submit, admin = [await token(spooler, capsys, s) for s in ("read", "submit", "admin")]
    both = await token(spooler, capsys, "read", "submit")
    requests: list[tuple[str, str, dict[str, Any], str]] = [
        ("GET", "/status", {}, "read"), ("GET", "/queue", {}, "read"),
        ("POST", "/messages", {"json": GOOD}, "submit"), ("POST", "/queue/flush", {"headers": JSON}, "admin"),
    ]
    allowed = {read: {"read"}, submit: {"submit"}, admin: {"read", "submit", "admin"}, both: {"read", "submit"}}
    for secret, scopes in allowed.items():
        for method, path, kw, needs in requests:
            status, headers, _ = await call(method, f"{base}{path}", secret, **kw)
            if needs in scopes:
                assert status in (200, 201), (scopes, method, path, status)
            else:
                assert status == 403, (scopes, method, path, status)
                assert f'scope="{needs}"' in headers["WWW-Authenticate"]
    message_id = (await call("POST", f"{base}/messages", submit, json=GOOD))[2]["id"]
    assert (await call("GET", f"{base}/queue/{message_id}", read))[0] == 200
    assert (await call("POST", f"{base}/queue/{message_id}/hold", read, headers=JSON))[0] == 403
    assert (await call("POST", f"{base}/queue/{message_id}/hold", admin, headers=JSON))[0] == 200


async def test_a_revoked_token_stops_working_at_once(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    spooler, base = api
    secret = await token(spooler, capsys, "read", name="dashboard")
    keep = await token(spooler, capsys, "read")
    assert (await call("GET", f"{base}/status", secret))[0] == 200
    assert await asyncio.to_thread(cli.main, ["token", "revoke", "dashboard", "--data",
                                              str(spooler.settings.spool_path)]) == 0
    assert (await call("GET", f"{base}/status", secret))[0] == 401
    assert (await call("GET", f"{base}/status", keep))[0] == 200
    assert (await call("GET", f"{base}/status"))[0] == 401  # a token exists still: no loopback rule


async def test_with_no_trusted_networks_a_loopback_listener_still_serves_loopback_clients(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    # The loopback rule is about who can reach the listener; relaying is trusted_networks' business
    # (test_http_relay.py).
    async with spooler_factory(relay=sink.address, trusted_networks=[], local_domains=["example.org"]) as spooler, \
            serving(spooler) as base:
        assert (await call("GET", f"{base}/status"))[0] == 200
        assert (await call("POST", f"{base}/messages", json=GOOD))[0] == 201  # b@example.org is local


async def test_a_listener_on_every_interface_needs_a_token_to_start_and_for_every_request(
        spooler_factory: SpoolerFactory, capsys: pytest.CaptureFixture[str]) -> None:
    from msgspool.errors import MsgspoolError

    async with spooler_factory() as spooler:
        with pytest.raises(MsgspoolError, match="no token exists"):
            await start(spooler, "0.0.0.0", free_port())
        secret = await token(spooler, capsys, "read")
        async with serving(spooler, "0.0.0.0") as base:
            assert (await call("GET", f"{base}/status"))[0] == 401  # not a loopback listener: no rule
            assert (await call("GET", f"{base}/status", secret))[0] == 200


def test_serve_refuses_a_non_loopback_http_listener_while_no_token_exists(tmp_path: Path) -> None:
    data = tmp_path / "spool"
    result = run_cli("serve", "--smtp", f"127.0.0.1:{free_port()}", "--http", f"0.0.0.0:{free_port()}",
                     data=data, timeout=30)
    assert result.returncode != 0
    assert "no token exists" in result.stderr and "msgspool token create" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_commands_show_the_secret_once_and_store_only_its_hash(tmp_path: Path) -> None:
    data = tmp_path / "spool"
    created = run_cli("token", "create", "--scope", "submit", "--scope", "read", "--name", "app", data=data)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("msgspool_") and len(secret) > 60
    listed = run_cli("token", "list", data=data)
    as_json = run_cli("token", "list", "--json", data=data)
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert row["name"] == "app" and row["scopes"] == ["read", "submit"] and row["created_at"].endswith("Z")
    assert "app" in listed.stdout and row["id"] in listed.stdout
    if STORE_UNDER_TEST == "postgresql":
        raw = pg.table_text(os.environ["MSGSPOOL_DATABASE_URL"], "tokens").encode()
    else:
        raw = (data / "spool.db").read_bytes() + b"".join(p.read_bytes() for p in data.glob("spool.db-*"))
    for shown in (listed.stdout, as_json.stdout, raw.decode("latin-1")):
        assert secret not in shown and secret.rsplit("_", 1)[1] not in shown
    assert run_cli("token", "create", "--scope", "read", "--name", "app", data=data).returncode == 1  # taken
    assert run_cli("token", "create", "--scope", "root", data=data).returncode == 2
    revoked = run_cli("token", "revoke", row["id"], data=data)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert run_cli("token", "list", data=data).stdout == ""
    assert run_cli("token", "revoke", "app", data=data).returncode == 1

