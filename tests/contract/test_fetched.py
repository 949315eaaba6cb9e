"""Fetched ids (ports.Fetched): a message submitted with a fetch account's id in its meta has that id
recorded in the same commit; a second store on the spool (a restarted daemon) sees it; ids the
server forgot are forgotten, per account."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from msgspool.domain.fetch import FETCH_ACCOUNT, FETCH_SOURCE, FETCH_UID
from msgspool.domain.message import Message
from msgspool.errors import AlreadyFetched
from msgspool.ports import Store
from tests.contract.conftest import submit


def fetched(account: str, uid: str) -> dict[str, str]:
    return {FETCH_ACCOUNT: account, FETCH_UID: uid, FETCH_SOURCE: "pop3://me@pop.test:110"}


async def test_a_fetched_message_records_its_id_with_it_and_another_store_sees_it(
        new_store: Callable[[], Store]) -> None:
    first = new_store()
    await first.open()
    assert await first.fetched_uids("work") == set()
    message = await submit(first, "me@example.org", meta=fetched("work", "uid-1"), origin="fetch")
    await submit(first, "me@example.org", meta=fetched("home", "uid-1"), origin="fetch")
    await submit(first, "me@example.org")  # not fetched: nothing recorded
    await first.close()
    second = new_store()
    await second.open()
    try:
        assert await second.fetched_uids("work") == {"uid-1"}
        assert await second.fetched_uids("home") == {"uid-1"}
        info = await second.get(message.id)
        assert info is not None
        assert any("fetch work" in h["detail"] and "uid-1" in h["detail"] for h in info.history)
    finally:
        await second.close()


async def test_ids_the_server_forgot_are_forgotten_for_that_account_only(store: Store) -> None:
    for uid in ("a", "b", "c"):
        await submit(store, "me@example.org", meta=fetched("work", uid))
    await submit(store, "me@example.org", meta=fetched("home", "a"))
    assert await store.forget_fetched("work", ["a", "c"]) == 2
    assert await store.forget_fetched("work", []) == 0
    assert await store.fetched_uids("work") == {"b"}
    assert await store.fetched_uids("home") == {"a"}


async def test_an_id_filed_already_is_refused_and_stores_nothing_even_from_two_stores_at_once(
        new_store: Callable[[], Store]) -> None:
    """Two nodes of a shared spool polling one account fetch the same message: one files it, the
    other's submission raises AlreadyFetched and leaves no message behind."""
    a, b = new_store(), new_store()
    await a.open()
    await b.open()
    try:
        results = await asyncio.gather(
            *(submit(s, "me@example.org", meta=fetched("work", "x"), origin="fetch") for s in (a, b, a, b)),
            return_exceptions=True)
        filed = [r for r in results if isinstance(r, Message)]
        assert len(filed) == 1 and all(isinstance(r, AlreadyFetched) for r in results if r not in filed), results
        assert await a.fetched_uids("work") == {"x"}
        refused = [m for m in results if isinstance(m, AlreadyFetched)]
        assert len(refused) == 3
        present = await b.list_messages(("outbox", "sent", "inbox"), None, 100)
        assert filed[0].id in {info.id for info in present}
        assert all(info.id == filed[0].id or info.copy_of == filed[0].id for info in present), present
    finally:
        await a.close()
        await b.close()
