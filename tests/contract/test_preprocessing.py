"""What the outbound hooks decided, recorded by the store (Queue.preprocessed): the hooks see a
whole message once, a split makes messages of their own, a failure holds the message."""

from __future__ import annotations

import time

from msgspool.domain.hooks import Draft, DraftRecipient, Hold, HookRecord, Preprocessed
from msgspool.ports import Store
from tests.contract.conftest import ids, statuses, submit


async def test_the_hooks_get_a_new_message_whole_and_only_once(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    [claimed] = await store.claim(now, 1, whole_messages=True)  # past the limit: the hooks decide for all
    assert [r.index for r in claimed.recipients] == [0, 1] and not claimed.preprocessed
    drafts = [Draft(message.id, message.sender, [DraftRecipient(r.address, index=r.index) for r in claimed.recipients],
                    message.content)]
    ready, _ = await store.preprocessed(claimed, Preprocessed(drafts, history=[HookRecord("tag", "unchanged")]), now)
    assert ids(ready) == [message.id] and ready[0].preprocessed
    await store.unclaim([(message.id, 0), (message.id, 1)], now)
    [again] = await store.claim(now, 10, whole_messages=True)
    assert again.preprocessed
    info = await store.get(message.id)
    assert info is not None and [(h["stage"], h["hook"], h["outcome"]) for h in info.history or []] == [
        ("outbound", "tag", "unchanged")]


async def test_a_split_makes_a_message_of_its_own_that_takes_its_recipients_along(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    [claimed] = await store.claim(now, 10, whole_messages=True)
    keep = Draft(message.id, message.sender, [DraftRecipient("b@example.com", index=0)], message.content)
    part = Draft(message.id, message.sender, [DraftRecipient("c@example.com", index=1)], b"Subject: part\r\n\r\nx\r\n")
    ready, _ = await store.preprocessed(claimed, Preprocessed([keep, part]), now)
    assert len(ready) == 2 and ready[0].id == message.id
    child = ready[1]
    assert [r.address for r in child.recipients] == ["c@example.com"] and child.content == part.content
    kept = await store.get(message.id)
    assert kept is not None and [r["address"] for r in kept.recipients] == ["b@example.com"]
    assert await statuses(store, child.id) == ["active"]
    assert await store.content(child.id) == part.content


async def test_a_hook_that_failed_holds_the_message_until_release(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    [claimed] = await store.claim(now, 10, whole_messages=True)
    ready, _ = await store.preprocessed(claimed, Preprocessed([], Hold("hook dkim failed")), now)
    assert ready == []
    assert await statuses(store, message.id) == ["held"]
    await store.release([message.id], now)
    [again] = await store.claim(now, 10, whole_messages=True)
    assert not again.preprocessed  # the hooks were not done: they run again
