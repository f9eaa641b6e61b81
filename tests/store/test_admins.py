"""Operators and the audit log: the contract over every store (and two instances on one
data directory, as the server and the CLI are)."""

from __future__ import annotations

import pytest

from mailhouse.store.base import AuditEntry, Store


async def test_operators(store: Store) -> None:
    assert await store.list_admins() == []
    alice = await store.add_admin("alice", "hash-1", 100.0)
    assert (alice.name, alice.password_hash, alice.created) == ("alice", "hash-1", 100.0)
    with pytest.raises(KeyError):
        await store.add_admin("alice", "other", 101.0)
    bob = await store.add_admin("bob.ops", "hash-2", 102.0)
    assert [a.name for a in await store.list_admins()] == ["alice", "bob.ops"]
    assert await store.get_admin("alice") == alice
    assert await store.get_admin("nobody") is None
    assert await store.set_admin_password("alice", "hash-3")
    assert (await store.get_admin("alice")).password_hash == "hash-3"  # type: ignore[union-attr]
    assert not await store.set_admin_password("nobody", "x")
    assert await store.remove_admin("bob.ops")
    assert not await store.remove_admin("bob.ops")
    again = await store.add_admin("bob.ops", "hash-4", 103.0)
    assert again.id > bob.id  # ids are never reused


@pytest.mark.parametrize("name", ["", "Alice", "a b", "a/b", "-x", "x" * 65, "ali\u00e7e", "a\n"])
async def test_operator_names_are_checked(store: Store, name: str) -> None:
    with pytest.raises(ValueError, match="not an admin name"):
        await store.add_admin(name, "h", 1.0)


async def test_the_audit_log_appends_and_reads_newest_first(store: Store) -> None:
    assert await store.list_audit(10) == []
    for n in range(5):
        await store.audit("cli:root", "user.add", f"u{n}@example.org", 10.0 + n)
    entries = await store.list_audit(3)
    assert [e.detail for e in entries] == ["u4@example.org", "u3@example.org", "u2@example.org"]
    assert entries[0] == AuditEntry(entries[0].id, 14.0, "cli:root", "user.add",
                                    "u4@example.org")
    assert [e.id for e in await store.list_audit(10)] == sorted(
        (e.id for e in await store.list_audit(10)), reverse=True)
