"""The dashboard (issue 13.4) in a real Chromium (Debian's, driven by Playwright: tests/support/
browser.py) against a real HTTP listener on loopback, over a real spool with a real SMTP sink as
the next hop: logging in with a token, the queue paged by cursor and searched, a message's page,
actions (one message's, and by selector after a dry-run count), a new message arriving over SSE
without a reload; and, without a browser, that nothing is served without the cookie or a token
and that a cookie alone cannot change anything (CSRF). Each test saves screenshots of its pages."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from msgspool.domain.tokens import ADMIN, READ, mint
from msgspool.spooler.runtime import Spooler
from msgspool.web.access import CSRF_COOKIE, SESSION_COOKIE, csrf_token
from msgspool.web.app import start
from tests.conftest import SpoolerFactory
from tests.support import browser
from tests.support.sink import Sink, free_port

HTML_MAIL = (
    "From: Ann <ann@example.org>\r\nTo: bob@example.com\r\nSubject: Quarterly report\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    '--b1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n'
    "--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe plain report.\r\n"
    "--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    "<p id=greeting>The <b>HTML</b> report.</p><script>parent.document.title='pwned';"
    "document.body.append('script ran')</script><img src=\"http://127.0.0.1:9/pixel.gif\">\r\n"
    "--b2--\r\n"
    '--b1\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="q3.csv"\r\n\r\na,b\r\n1,2\r\n'
    "--b1--\r\n")


def plain(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: x@example.org\r\n\r\nbody of {subject}\r\n".encode()


@dataclass
class Dash:
    spooler: Spooler
    base: str
    secret: str
    shots: Path

    async def send(self, subject: str, sender: str = "ann@example.org", to: str = "fail4xx-bob@example.com") -> str:
        return await self.spooler.send(plain(subject), sender=sender, recipients=[to])

    async def tried(self, message_id: str) -> None:
        """Until the message's first attempts are over (no recipient in flight: it can be held)."""
        for _ in range(200):
            info = await self.spooler.store.get(message_id)
            assert info is not None
            if all(r["status"] not in ("queued", "active") for r in info.recipients):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{message_id} still in flight")


@asynccontextmanager
async def serving(spooler: Spooler) -> AsyncIterator[str]:
    port = free_port()
    runner = await start(spooler, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def new_token(spooler: Spooler, scope: str, name: str) -> str:
    made = mint(frozenset({scope}), name, time.time())
    await spooler.store.create_token(made)
    return made.secret


@pytest.fixture
async def dash(spooler_factory: SpoolerFactory, sink: Sink, tmp_path: Path) -> AsyncIterator[Dash]:
    # fail4xx-* recipients are deferred by the sink (450): their messages stay in the queue.
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler, \
            serving(spooler) as base:
        yield Dash(spooler, base, await new_token(spooler, ADMIN, "operator"), browser.screenshots(tmp_path))


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    async with browser.chromium() as b:
        yield b


async def logged_in(chromium: Any, dash: Dash, secret: str | None = None) -> Any:
    context = await chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    await page.goto(dash.base + "/")
    assert "/login" in page.url
    await page.fill("#token", secret or dash.secret)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    return page


async def shot(page: Any, dash: Dash, name: str) -> None:
    await page.screenshot(path=str(dash.shots / f"{name}.png"), full_page=False)


async def rows(page: Any, where: str = "#queue-list") -> list[str]:
    return [str(i) for i in await page.eval_on_selector_all(f"{where} tr[data-id]", "rs => rs.map(r => r.dataset.id)")]


async def test_login_with_a_token_then_the_queue_pages_by_cursor(dash: Dash, chromium: Any) -> None:
    ids = [await dash.send(f"message {i}") for i in range(120)]
    context = await chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    await page.goto(dash.base + "/?status=deferred")
    assert re.search(r"/login\?next=%2F%3Fstatus%3Ddeferred$", page.url), page.url
    await shot(page, dash, "login")
    await page.fill("#token", "msgspool_000000000000_" + "x" * 43)
    await page.click("button[type=submit]")
    assert "not valid" in await page.inner_text("#error")
    await page.fill("#token", dash.secret)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    assert page.url == dash.base + "/?status=deferred"  # back where it was going
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies[SESSION_COOKIE]["httpOnly"] and cookies[SESSION_COOKIE]["sameSite"] == "Strict"
    assert cookies[CSRF_COOKIE]["sameSite"] == "Strict"
    assert "operator (admin)" in await page.inner_text("#who")

    await page.goto(dash.base + "/")
    await page.wait_for_selector("body[data-ready=true]")
    oldest = sorted(ids)  # id order (two sent within one id tick may sort either way)
    newest = oldest[::-1]  # the queue page's order unless asked otherwise
    first = await rows(page)
    assert first == newest[:50]
    await page.wait_for_function("() => document.querySelector('[data-count=messages] b').textContent === '120'")
    await shot(page, dash, "queue")
    await page.click("#next-page")
    await page.wait_for_selector("body[data-ready=true]")
    assert "cursor=" in page.url and await rows(page) == newest[50:100]
    await page.click("#next-page")
    await page.wait_for_selector("body[data-ready=true]")
    assert await rows(page) == newest[100:] and await page.query_selector("#next-page") is None

    await page.select_option("select[name=order]", "oldest")  # the form's order, kept by the pager
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    assert "order=oldest" in page.url and await rows(page) == oldest[:50]
    await page.click("#next-page")
    await page.wait_for_selector("body[data-ready=true]")
    assert await rows(page) == oldest[50:100]

    # With more than a page queued, new mail shows live at the top of the first page.
    await page.goto(dash.base + "/")
    await page.wait_for_selector("body[data-ready=true]")
    await page.wait_for_selector("#live.on")
    new = await dash.send("on a full queue")
    await page.wait_for_selector(f"#queue-list tr[data-id='{new}'].new", timeout=10_000)
    assert (await rows(page))[:2] == [new, newest[0]]


async def test_the_queue_is_searched_by_sender_recipient_destination_and_status(dash: Dash, chromium: Any) -> None:
    ann = [await dash.send(f"from ann {i}") for i in range(3)]
    carl = sorted([await dash.send(f"from carl {i}", sender="carl@example.net") for i in range(2)], reverse=True)
    held = await dash.send("to be held", sender="dora@example.net", to="fail4xx-dora@elsewhere.test")
    await dash.tried(held)
    await dash.spooler.hold([held])
    page = await logged_in(chromium, dash)
    assert sorted(await rows(page)) == sorted([*ann, *carl, held])
    await shot(page, dash, "queue-all")  # the README's docs/dashboard.png
    await page.fill("input[name=sender]", "carl@example.net")
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    assert "sender=carl%40example.net" in page.url and await rows(page) == carl
    await shot(page, dash, "queue-search")
    await page.goto(dash.base + "/?sender=%40example.net&status=held")
    await page.wait_for_selector("body[data-ready=true]")
    assert await rows(page) == [held]
    await page.goto(dash.base + "/?recipient=fail4xx-dora%40elsewhere.test")
    await page.wait_for_selector("body[data-ready=true]")
    assert await rows(page) == [held]
    await page.goto(dash.base + "/")
    await page.wait_for_selector("body[data-ready=true]")
    await page.fill("input[name=subject]", "FROM CARL")  # the queue search's subject term: case-insensitive
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    assert await rows(page) == carl and "from carl 0" in await page.inner_text("#queue-list")
    await page.goto(dash.base + "/?destination=nowhere.example")
    await page.wait_for_selector("body[data-ready=true]")
    assert await rows(page) == [] and "No messages match" in await page.inner_text("#queue-list")


async def test_a_message_page_shows_recipients_attempts_history_and_content_safely(dash: Dash, chromium: Any,
                                                                                   sink: Sink) -> None:
    message_id = await dash.spooler.send(HTML_MAIL.encode(), sender="ann@example.org",
                                         recipients=["fail4xx-bob@example.com", "carol@example.org"])
    await dash.tried(message_id)  # the remote recipient's first attempt, deferred by the sink's 450
    page = await logged_in(chromium, dash)
    await page.click(f"a[href='/messages/{message_id}']")
    await page.wait_for_selector("body[data-ready=true]")
    assert await page.inner_text("h1") == "Quarterly report"
    text = await page.inner_text("main")
    assert "fail4xx-bob@example.com" in text and "carol@example.org" in text
    assert "450" in text  # the deferral's reply, in the recipients and the attempts
    assert "delivered to mailbox carol@example.org" in text
    frame_element = await page.wait_for_selector("#content iframe.mail")
    assert await frame_element.get_attribute("sandbox") == ""
    frame = await frame_element.content_frame()
    await frame.wait_for_selector("#greeting")
    assert await frame.inner_text("#greeting") == "The HTML report."
    await asyncio.sleep(0.3)
    assert "script ran" not in await frame.inner_text("body") and await page.title() != "pwned"
    async with aiohttp.ClientSession(cookies={SESSION_COOKIE: dash.secret}) as http, \
            http.get(f"{dash.base}/messages/{message_id}/html") as response:
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    await shot(page, dash, "message")
    await page.click("button[data-tab=text]")
    assert await page.inner_text("#text-body") == "The plain report."
    await page.click("button[data-tab=raw]")
    await page.wait_for_function("() => document.querySelector('#raw').textContent.includes('Subject: Quarterly')")
    await page.click("button[data-tab=attachments]")
    assert "q3.csv" in await page.inner_text("#content")
    await page.click("button[data-tab=headers]")
    assert "Quarterly report" in await page.inner_text("#content")
    copy = await page.get_attribute("a[href^='/mailboxes/carol']", "href")
    assert copy == "/mailboxes/carol%40example.org/folders/inbox"


async def held(dash: Dash, ids: list[str]) -> list[bool]:
    infos = [await dash.spooler.store.get(i) for i in ids]
    return [info is not None and info.held for info in infos]


async def test_actions_on_a_message_and_by_selector_after_a_dry_run_count(dash: Dash, chromium: Any) -> None:
    one = await dash.send("one")
    bulk = [await dash.send(f"bulk {i}", sender="list@example.net") for i in range(4)]
    for message_id in (one, *bulk):
        await dash.tried(message_id)
    page = await logged_in(chromium, dash)
    await page.goto(f"{dash.base}/messages/{one}")
    await page.wait_for_selector("body[data-ready=true]")
    await page.click("button[data-action=hold]")
    await page.wait_for_selector("button[data-action=release]:not([disabled])")
    info = await dash.spooler.store.get(one)
    assert info is not None and info.held
    await page.click("button[data-action=release]")
    await page.wait_for_selector("button[data-action=hold]:not([disabled])")
    info = await dash.spooler.store.get(one)
    assert info is not None and not info.held
    await page.click("button[data-action=delete]")
    # A live update redraws the page while the delete waits for its confirmation: it stays asked
    # (it was lost with the redraw, and the confirmation could not be clicked).
    actions = await page.query_selector("#actions")
    await dash.spooler.flush([one])  # tried again at once: its `deferred` event redraws the page
    await page.wait_for_function("(box) => !box.isConnected", arg=actions)
    await page.click("button[data-action=delete-confirm]")
    await page.wait_for_selector("#actions >> text=deleted")
    assert await dash.spooler.store.get(one) is None

    await page.goto(dash.base + "/?sender=list%40example.net")
    await page.wait_for_selector("body[data-ready=true]")
    await page.select_option("#bulk select[name=action]", "hold")
    await page.click("#bulk-count")
    await page.wait_for_selector("#bulk >> text=4 messages match")
    assert await held(dash, bulk) == [False] * 4
    await shot(page, dash, "bulk-dry-run")
    await page.click("#bulk-run")
    await page.wait_for_selector("#bulk >> text=hold: 4 done")
    assert await held(dash, bulk) == [True] * 4
    await page.wait_for_function("() => document.querySelector('[data-count=held] b').textContent === '4'")

    # Ticked messages of the page: release two of the four.
    await page.wait_for_selector(f"input[data-select='{bulk[0]}']")
    assert await page.is_disabled("button[data-selected=release]")
    await page.check(f"input[data-select='{bulk[0]}']")
    await page.check(f"input[data-select='{bulk[2]}']")
    assert "2 selected" in await page.inner_text("#selection")
    await page.click("button[data-selected=release]")
    await page.wait_for_selector("#notice >> text=release: 2 of 2 message(s)")
    assert await held(dash, bulk) == [False, True, False, True]


async def test_a_read_token_sees_the_pages_but_cannot_act(dash: Dash, chromium: Any) -> None:
    message_id = await dash.send("look only")
    await dash.tried(message_id)
    page = await logged_in(chromium, dash, await new_token(dash.spooler, READ, "viewer"))
    await page.goto(f"{dash.base}/messages/{message_id}")
    await page.wait_for_selector("body[data-ready=true]")
    await page.click("button[data-action=hold]")
    await page.wait_for_selector("#notice.error")
    assert "lacks the 'admin' scope" in await page.inner_text("#notice")
    info = await dash.spooler.store.get(message_id)
    assert info is not None and not info.held


async def test_a_new_message_arrives_over_sse_without_a_reload(dash: Dash, chromium: Any) -> None:
    await dash.send("already there")
    page = await logged_in(chromium, dash)
    await page.evaluate("window.notReloaded = true")
    await page.wait_for_selector("#live.on")
    new = await dash.send("arrives live", sender="new@example.net")
    await page.wait_for_selector(f"#queue-list tr[data-id='{new}'].new", timeout=10_000)
    await page.wait_for_function("() => document.querySelector('[data-count=messages] b').textContent === '2'")
    assert new in await page.inner_text("#feed")
    assert await page.evaluate("window.notReloaded") is True
    await shot(page, dash, "queue-live")

    # Under steady traffic (a message every 0.1 s for 3 s) the page keeps up while it lasts.
    async def stream() -> list[str]:
        sent = []
        for i in range(30):
            sent.append(await dash.send(f"steady {i}"))
            await asyncio.sleep(0.1)
        return sent

    steady = asyncio.create_task(stream())
    await page.wait_for_function("() => document.querySelectorAll('#queue-list tr[data-id]').length > 4",
                                 timeout=10_000)
    assert not steady.done()  # the table grew while the traffic went on
    await steady

    # New mail filed into a mailbox shows in its folder's page, live too.
    await dash.spooler.send(plain("hello carol"), sender="ann@example.org", recipients=["carol@example.org"])
    await page.goto(dash.base + "/mailboxes/carol%40example.org/folders/inbox")
    await page.wait_for_selector("body[data-ready=true]")
    await page.wait_for_selector("#live.on")
    before = await rows(page, "#folder-list")
    assert len(before) == 1
    await page.evaluate("window.notReloaded = true")
    await dash.spooler.send(plain("again carol"), sender="ann@example.org", recipients=["carol@example.org"])
    await page.wait_for_function("() => document.querySelectorAll('#folder-list tr[data-id]').length === 2",
                                 timeout=10_000)
    assert await page.evaluate("window.notReloaded") is True
    await shot(page, dash, "mailbox-folder")


async def test_destinations_status_and_mailboxes_pages(dash: Dash, chromium: Any, sink: Sink) -> None:
    await dash.send("deferred one")
    await dash.spooler.send(plain("to carol"), sender="ann@example.org", recipients=["carol@example.org"])
    for _ in range(100):
        info = (await dash.spooler.status_table())["transports"]
        if any(d.get("backlog") for t in info for d in t.get("destinations", [])):
            break
        await asyncio.sleep(0.05)
    page = await logged_in(chromium, dash)
    await page.click("header nav a[data-nav=destinations]")
    await page.wait_for_selector("body[data-ready=true]")
    row = await page.inner_text(f"tr[data-destination='{sink.address}']")
    assert "smtp" in row and "1" in row
    await shot(page, dash, "destinations")
    await page.click("header nav a[data-nav=status]")
    await page.wait_for_selector("body[data-ready=true]")
    text = await page.inner_text("main")
    assert "spooler" in text and "deferred" in text and "Delivery nodes" in text
    await shot(page, dash, "status")
    for i in range(50):  # carol's and these make two pages of 50
        await dash.spooler.store.set_receive_folder(f"zz{i:02d}@example.org", "IPM.Note", "inbox")
    await page.click("header nav a[data-nav=mailboxes]")
    await page.wait_for_selector("body[data-ready=true]")
    assert len(await page.query_selector_all("#mailboxes li")) == 50
    await page.click("#more-mailboxes")
    await page.wait_for_selector("#mailboxes li[data-mailbox='zz49@example.org']")
    assert len(await page.query_selector_all("#mailboxes li")) == 1
    assert await page.query_selector("#more-mailboxes") is None
    await page.click("header nav a[data-nav=mailboxes]")
    await page.wait_for_selector("body[data-ready=true]")
    listed = page.locator("#mailboxes li[data-mailbox='carol@example.org']")
    assert "inbox" in await listed.inner_text()
    await listed.locator("a").first.click()  # the listed mailbox opens on its folders
    await page.wait_for_selector("#folders")
    assert page.url == dash.base + "/mailboxes/carol%40example.org"
    assert "inbox" in await page.inner_text("#folders")
    await page.click("header nav a[data-nav=mailboxes]")
    await page.wait_for_selector("body[data-ready=true]")
    await page.fill("input[name=mailbox]", "carol@example.org")
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("#folders")
    assert "inbox" in await page.inner_text("#folders")
    await page.click("#folders a")
    await page.wait_for_selector("body[data-ready=true]")
    assert len(await rows(page, "#folder-list")) == 1
    await shot(page, dash, "mailbox")


async def test_while_no_token_exists_a_loopback_listener_serves_the_dashboard_without_a_login(
        spooler_factory: SpoolerFactory, sink: Sink, chromium: Any, tmp_path: Path) -> None:
    async with spooler_factory(relay=sink.address) as spooler, serving(spooler) as base:
        message_id = await spooler.send(plain("open"), sender="ann@example.org", recipients=["fail4xx-b@example.com"])
        page = await (await chromium.new_context()).new_page()
        await page.goto(base + "/")
        await page.wait_for_selector("body[data-ready=true]")
        assert page.url == base + "/" and message_id in await rows(page)
        assert "no tokens" in await page.inner_text("#who")
        await new_token(spooler, READ, "first")  # the first token ends it, for the page too
        await page.goto(base + "/")
        assert "/login" in page.url


async def test_without_the_cookie_or_a_token_nothing_is_served_and_a_cookie_alone_changes_nothing(
        dash: Dash) -> None:
    message_id = await dash.send("guarded")
    await dash.tried(message_id)
    async with aiohttp.ClientSession() as http:
        for path in ("/", f"/messages/{message_id}", "/status", f"/messages/{message_id}/html"):
            async with http.get(dash.base + path, allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"].startswith("/login?next="), path
        for path in ("/api/queue", f"/api/queue/{message_id}", "/api/status", "/session"):
            async with http.get(dash.base + path) as response:
                assert response.status == 401 and response.content_type == "application/problem+json", path
        async with http.get(dash.base + "/login") as response:  # the form and its files need nothing
            assert response.status == 200 and "token" in await response.text()
        async with http.get(dash.base + "/static/dashboard.js") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
        async with http.get(dash.base + "/", headers={"Cookie": f"{SESSION_COOKIE}=msgspool_123456789abc_"
                                                      + "y" * 43}, allow_redirects=False) as response:
            assert response.status == 303  # a cookie that is no token's: back to the login

    jar = {SESSION_COOKIE: dash.secret}
    json_headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(cookies=jar) as http:
        async with http.get(dash.base + "/api/queue") as response:
            assert response.status == 200
        async with http.post(f"{dash.base}/api/queue/{message_id}/hold", data="{}", headers=json_headers) as response:
            body = await response.json()
            assert response.status == 403 and "X-CSRF-Token" in body["detail"]
        async with http.post(f"{dash.base}/api/queue/{message_id}/hold", data="{}",
                             headers={**json_headers, "X-CSRF-Token": "0" * 64}) as response:
            assert response.status == 403
        info = await dash.spooler.store.get(message_id)
        assert info is not None and not info.held
        async with http.post(f"{dash.base}/api/queue/{message_id}/hold", data="{}",
                             headers={**json_headers, "X-CSRF-Token": csrf_token(dash.secret)}) as response:
            assert response.status == 200
    info = await dash.spooler.store.get(message_id)
    assert info is not None and info.held

    # The API's bearer tokens work as before: no cookie, no CSRF token.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {dash.secret}"}) as http, \
            http.post(f"{dash.base}/api/queue/{message_id}/release", data="{}", headers=json_headers) as response:
        assert response.status == 200
    # A login from another origin is refused (login CSRF), as every cross-origin request is.
    async with aiohttp.ClientSession() as http, \
            http.post(dash.base + "/login", data={"token": dash.secret}, allow_redirects=False,
                      headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 403 and SESSION_COOKIE not in response.cookies
    # Behind a proxy that ended TLS the cookies are Secure (else they are not: plain HTTP here).
    async with aiohttp.ClientSession() as http, \
            http.post(dash.base + "/login", data={"token": dash.secret}, allow_redirects=False,
                      headers={"X-Forwarded-Proto": "https"}) as response:
        assert response.status == 303 and response.cookies[SESSION_COOKIE]["secure"]
        assert response.cookies[SESSION_COOKIE]["httponly"] and response.cookies[SESSION_COOKIE]["samesite"] == "Strict"
    # Nor does the login send anyone elsewhere afterwards (no open redirect).
    async with aiohttp.ClientSession() as http, \
            http.post(dash.base + "/login", data={"token": dash.secret, "next": "//evil.example/x"},
                      allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/"
