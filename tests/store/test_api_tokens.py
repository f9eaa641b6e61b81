"""API tokens: the contract over every store (and two instances on one data directory, as the
server and the CLI are)."""

from __future__ import annotations

import hashlib

import pytest

from mailhouse.store.base import ApiToken, Store


def digest(n: int) -> bytes:
    return hashlib.sha256(f"secret-{n}".encode()).digest()


async def test_tokens_are_kept_by_digest_and_listed_per_operator(store: Store) -> None:
    await store.add_admin("alice", "h", 1.0)
    await store.add_admin("bob", "h", 1.0)
    first = await store.add_api_token("alice", "ci", ["read", "queue"], digest(1), 10.0, None)
    assert first == ApiToken(first.id, "alice", "ci", ("read", "queue"), 10.0, None, None)
    second = await store.add_api_token("alice", "", ["read"], digest(2), 11.0, 99.5)
    third = await store.add_api_token("bob", "x", ["accounts"], digest(3), 12.0, None)
    assert first.id < second.id < third.id
    assert await store.api_token(digest(1)) == first
    assert await store.api_token(digest(2)) == second
    assert await store.api_token(digest(9)) is None
    assert await store.list_api_tokens("alice") == [first, second]
    assert await store.list_api_tokens("nobody") == []
    assert await store.list_api_tokens() == [first, second, third]


async def test_an_unknown_operator_a_bad_scope_or_a_reused_digest_is_refused(
        store: Store) -> None:
    with pytest.raises(KeyError):
        await store.add_api_token("nobody", "", ["read"], digest(1), 1.0, None)
    await store.add_admin("alice", "h", 1.0)
    for scope in ("", "two words", "UPPER", "x" * 40):
        with pytest.raises(ValueError, match="not a scope"):
            await store.add_api_token("alice", "", [scope], digest(1), 1.0, None)
    await store.add_api_token("alice", "", ["read"], digest(1), 1.0, None)
    with pytest.raises(ValueError):
        await store.add_api_token("alice", "", ["read"], digest(1), 1.0, None)


async def test_touch_and_revoke(store: Store) -> None:
    await store.add_admin("alice", "h", 1.0)
    token = await store.add_api_token("alice", "", ["read"], digest(1), 1.0, None)
    await store.touch_api_token(token.id, 50.0)
    assert (await store.api_token(digest(1))).last_used == 50.0  # type: ignore[union-attr]
    await store.touch_api_token(token.id + 100, 50.0)  # gone meanwhile: nothing to do
    removed = await store.remove_api_token(token.id)
    assert removed is not None and removed.id == token.id
    assert await store.remove_api_token(token.id) is None
    assert await store.api_token(digest(1)) is None


async def test_tokens_go_with_their_operator(store: Store) -> None:
    await store.add_admin("alice", "h", 1.0)
    await store.add_api_token("alice", "", ["read"], digest(1), 1.0, None)
    await store.remove_admin("alice")
    await store.add_admin("alice", "h", 2.0)  # a new operator of the same name owns nothing
    assert await store.api_token(digest(1)) is None
    assert await store.list_api_tokens() == []
