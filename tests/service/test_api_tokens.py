"""service/api_tokens.py: tokens are 256 random bits shown once, checked by digest, refused
when malformed, unknown or expired; last use written at most once a minute; audited."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.service.accounts import InvalidInput, NotFound
from mailhouse.service.api_tokens import TOUCH_EVERY, ApiTokens, digest
from mailhouse.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def setup() -> tuple[MemoryStore, ApiTokens, Clock]:
    store = MemoryStore()
    await store.open()
    await store.add_admin("ann", "h", 1.0)
    clock = Clock()
    return store, ApiTokens(store, clock=clock), clock


def test_create_authenticate_expire_and_touch() -> None:
    async def run() -> None:
        store, tokens, clock = await setup()
        new = await tokens.create("ann", ["read", "read", "queue"], actor="cli:root",
                                  label="ci", days=1)
        assert new.secret.startswith("mh_") and len(new.secret) == 46
        assert new.token.scopes == ("read", "queue")
        assert await store.api_token(digest(new.secret)) is not None
        found = await tokens.authenticate(new.secret)
        assert found is not None and found.id == new.token.id
        assert (await store.api_token(digest(new.secret))).last_used == 1000.0  # type: ignore
        clock.now += TOUCH_EVERY - 1
        await tokens.authenticate(new.secret)
        assert (await store.api_token(digest(new.secret))).last_used == 1000.0  # type: ignore
        clock.now += 1
        await tokens.authenticate(new.secret)
        assert (await store.api_token(digest(new.secret))).last_used == clock.now  # type: ignore
        clock.now = 1000.0 + 86400
        assert await tokens.authenticate(new.secret) is None  # expired
        other = await tokens.create("ann", ["audit"], actor="cli:root")
        assert other.secret != new.secret and other.token.expires is None
        assert [e.action for e in await store.list_audit(10)] == ["token.add", "token.add"]
        await tokens.revoke(other.token.id, actor="operator:ann")
        assert await tokens.authenticate(other.secret) is None
        with pytest.raises(NotFound):
            await tokens.revoke(other.token.id, actor="operator:ann")
        assert (await store.list_audit(1))[0].detail == f"{other.token.id} ann"

    asyncio.run(run())


@pytest.mark.parametrize(("scopes", "label", "days"), [
    ([], "", None), (["everything"], "", None), (["read"], "x" * 101, None),
    (["read"], "tab\there", None), (["read"], "", 0), (["read"], "", 3651)])
def test_bad_requests_are_refused(scopes: list[str], label: str, days: int | None) -> None:
    async def run() -> None:
        _, tokens, _ = await setup()
        with pytest.raises(InvalidInput):
            await tokens.create("ann", scopes, actor="cli:root", label=label, days=days)

    asyncio.run(run())


def test_an_unknown_operator_is_not_found() -> None:
    async def run() -> None:
        _, tokens, _ = await setup()
        with pytest.raises(NotFound):
            await tokens.create("bob", ["read"], actor="cli:root")

    asyncio.run(run())


@given(st.text(max_size=60))
def test_no_other_string_authenticates(secret: str) -> None:
    async def run() -> None:
        _, tokens, _ = await setup()
        await tokens.create("ann", ["read"], actor="cli:root")
        assert await tokens.authenticate(secret) is None

    asyncio.run(run())
