"""Lifecycle: a spool is made only when asked, keeps what was committed across a close, and is
shared by every store opened on it (the daemon's, the CLI's)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from msgspool.domain.tokens import READ, mint
from msgspool.errors import NoSpool
from msgspool.ports import Store
from tests.contract.conftest import statuses, submit


async def test_a_spool_is_not_made_by_an_open_that_must_not_create_one(new_store: Callable[[], Store]) -> None:
    for _ in range(2):  # the first refusal left nothing behind for the second to find
        with pytest.raises(NoSpool):
            await new_store().open(create=False)
    made = new_store()
    await made.open()
    await made.close()
    reopened = new_store()
    await reopened.open(create=False)
    await reopened.close()


async def test_what_was_committed_is_there_after_a_close_and_a_new_open(new_store: Callable[[], Store]) -> None:
    now = time.time()
    first = new_store()
    await first.open()
    message = await submit(first, "b@example.com", now=now)
    await first.close()
    second = new_store()
    await second.open(create=False)
    try:
        assert await statuses(second, message.id) == ["queued"]
        assert [m.id for m in await second.claim(now, 10)] == [message.id]
    finally:
        await second.close()


async def test_stores_open_on_one_spool_see_each_others_commits(store: Store,
                                                                 new_store: Callable[[], Store]) -> None:
    cli = new_store()  # as `msgspool token create` runs beside the daemon
    await cli.open(create=False)
    try:
        new = mint(frozenset({READ}), "from-the-cli", time.time())
        await cli.create_token(new)
        message = await submit(store, "b@example.com")
        assert await store.token(new.token.id) is not None
        assert await cli.get(message.id) is not None
    finally:
        await cli.close()
