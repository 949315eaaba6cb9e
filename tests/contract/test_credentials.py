"""Credentials: HTTP API tokens and submission accounts as the CLI manages them and the daemon
finds them (secrets and passwords never stored, only digests and hashes)."""

from __future__ import annotations

import time

import pytest

from msgspool.domain.tokens import ADMIN, READ, matches, mint
from msgspool.domain.users import User, hash_password, verify_password
from msgspool.ports import Store


async def test_a_token_is_found_by_its_id_and_its_secret_matches_the_stored_digest(store: Store) -> None:
    assert await store.has_tokens() is False
    new = mint(frozenset({READ}), "reader", time.time())
    await store.create_token(new)
    found = await store.token(new.token.id)
    assert found is not None
    token, digest = found
    assert token == new.token and matches(new.secret, digest) and new.secret not in digest
    assert await store.has_tokens() is True
    assert await store.token("no-such-id") is None


async def test_tokens_are_listed_oldest_first_and_a_name_is_taken_once(store: Store) -> None:
    now = time.time()
    first, second = mint(frozenset({READ}), "one", now), mint(frozenset({ADMIN}), "two", now + 1)
    await store.create_token(first)
    await store.create_token(second)
    assert await store.tokens() == [first.token, second.token]
    with pytest.raises(ValueError, match="one"):
        await store.create_token(mint(frozenset({READ}), "one", now + 2))
    with pytest.raises(ValueError):  # a name may not be another token's id either
        await store.create_token(mint(frozenset({READ}), first.token.id, now + 2))
    assert await store.tokens() == [first.token, second.token]


async def test_a_token_is_revoked_by_id_or_name_and_stops_working_at_once(store: Store) -> None:
    now = time.time()
    by_id, by_name = mint(frozenset({READ}), "a", now), mint(frozenset({READ}), "b", now + 1)
    await store.create_token(by_id)
    await store.create_token(by_name)
    assert await store.revoke_token(by_id.token.id) == by_id.token
    assert await store.revoke_token("b") == by_name.token
    assert await store.revoke_token("b") is None
    assert await store.token(by_id.token.id) is None and await store.token(by_name.token.id) is None
    assert await store.has_tokens() is False


async def test_a_user_is_found_whatever_the_case_of_its_name(store: Store) -> None:
    hashed = hash_password("pw", n=2**8)
    assert await store.add_user(User("Alice@Example.org", ("@example.net",), 1.0), hashed) is False
    found = await store.user("alice@example.ORG")
    assert found is not None
    user, stored = found
    assert user == User("Alice@Example.org", ("@example.net",), 1.0)
    assert verify_password("pw", stored) and "pw" not in stored.split("$")
    assert await store.user("bob@example.org") is None


async def test_a_user_is_replaced_only_when_asked_and_deleted_by_name(store: Store) -> None:
    old, new = hash_password("old", n=2**8), hash_password("new", n=2**8)
    await store.add_user(User("bob@example.org", (), 1.0), old)
    with pytest.raises(ValueError, match="exists"):
        await store.add_user(User("bob@example.org", (), 2.0), new)
    assert await store.add_user(User("bob@example.org", ("*",), 2.0), new, replace=True) is True
    found = await store.user("bob@example.org")
    assert found is not None and found[0].senders == ("*",) and verify_password("new", found[1])
    await store.add_user(User("alice@example.org", (), 3.0), old)
    assert [u.name for u in await store.users()] == ["alice@example.org", "bob@example.org"]
    with pytest.raises(ValueError, match="exists"):  # one account, whatever the case of its name
        await store.add_user(User("BOB@example.org", (), 4.0), new)
    assert await store.delete_user("Bob@Example.org") is True
    assert await store.delete_user("bob@example.org") is False
    assert [u.name for u in await store.users()] == ["alice@example.org"]
