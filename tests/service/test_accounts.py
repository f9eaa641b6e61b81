"""Password hashing and the account administration rules, against a fake store."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import pytest
from argon2 import PasswordHasher

from mailhouse.service.accounts import (
    ARGON2_MEMORY_COST_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    AccountError,
    Accounts,
    AlreadyExists,
    InvalidInput,
    NotFound,
    Passwords,
    canonical_address,
    canonical_alias,
    canonical_domain,
    check_password,
    default_hasher,
)
from tests.service.fake_store import FakeStore

T = TypeVar("T")
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def accounts(store: FakeStore) -> Accounts:
    return Accounts(store, Passwords(CHEAP))


@pytest.fixture
def populated(accounts: Accounts) -> Accounts:
    async def setup() -> None:
        await accounts.add_domain("example.test")
        await accounts.add_user("alice@example.test", "alice-pw")
        await accounts.add_user("bob@example.test", "bob-pw")

    run(setup())
    return accounts


# --- passwords --------------------------------------------------------------------------------

def test_default_hasher_is_argon2id_with_documented_parameters() -> None:
    encoded = Passwords(default_hasher()).hash("correct horse")
    assert encoded.startswith(
        f"$argon2id$v=19$m={ARGON2_MEMORY_COST_KIB},t={ARGON2_TIME_COST},"
        f"p={ARGON2_PARALLELISM}$")


def test_hash_and_verify() -> None:
    passwords = Passwords(CHEAP)
    encoded = passwords.hash("s3cret")
    assert passwords.verify(encoded, "s3cret")
    assert not passwords.verify(encoded, "s3cret ")
    assert not passwords.verify(encoded, "")
    assert passwords.hash("s3cret") != encoded  # salted


def test_unknown_user_is_checked_against_a_dummy_hash() -> None:
    calls: list[str] = []

    class Spy(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append(str(hash))
            return super().verify(hash, password)

    passwords = Passwords(Spy(time_cost=1, memory_cost=8, parallelism=1))
    assert not passwords.verify(None, "anything")
    assert not passwords.verify(None, "anything")
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0].startswith("$argon2id$")


def test_unreadable_or_foreign_hash_never_matches() -> None:
    passwords = Passwords(CHEAP)
    assert not passwords.verify("{SHA512-CRYPT}$6$abc", "x")
    assert not passwords.verify("", "x")
    assert passwords.needs_rehash("{PLAIN}x")


def test_passwords_are_nfc_normalized() -> None:
    passwords = Passwords(CHEAP)
    encoded = passwords.hash("caf\u00e9")  # precomposed é
    assert passwords.verify(encoded, "cafe\u0301")  # e + combining acute


@pytest.mark.parametrize("bad", ["", "a\0b", "line\nbreak", "cr\r", "x" * 1025])
def test_unusable_passwords_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_password(bad)
    assert not Passwords(CHEAP).verify(Passwords(CHEAP).hash("ok"), bad)


def test_needs_rehash_when_parameters_change() -> None:
    old = Passwords(CHEAP).hash("pw")
    assert not Passwords(CHEAP).needs_rehash(old)
    assert Passwords(PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)).needs_rehash(old)


# --- login ------------------------------------------------------------------------------------

def test_authenticate(populated: Accounts) -> None:
    account = run(populated.authenticate("Alice@EXAMPLE.test", "alice-pw"))
    assert account is not None and account.address == "alice@example.test"
    assert run(populated.authenticate("alice@example.test", "bob-pw")) is None
    assert run(populated.authenticate("nobody@example.test", "alice-pw")) is None
    assert run(populated.authenticate("not an address", "alice-pw")) is None
    assert run(populated.authenticate("alice@example.test", "")) is None


def test_authenticate_rehashes_outdated_hash(store: FakeStore, populated: Accounts) -> None:
    before = store.accounts["alice@example.test"].password_hash
    stronger = Accounts(store, Passwords(PasswordHasher(time_cost=2, memory_cost=16,
                                                        parallelism=1)))
    assert run(stronger.authenticate("alice@example.test", "alice-pw")) is not None
    after = store.accounts["alice@example.test"].password_hash
    assert after != before and "m=16,t=2" in after
    assert run(stronger.authenticate("alice@example.test", "alice-pw")) is not None
    assert store.accounts["alice@example.test"].password_hash == after  # no second rehash


# --- canonical forms --------------------------------------------------------------------------

def test_canonical_forms() -> None:
    assert canonical_domain("Example.TEST.") == "example.test"
    assert canonical_domain("bücher.example") == "xn--bcher-kva.example"
    assert canonical_address(" Alice@Bücher.Example ") == "alice@xn--bcher-kva.example"
    assert canonical_alias("@Example.Test") == "@example.test"
    assert canonical_alias("Team@example.test") == "team@example.test"


@pytest.mark.parametrize("bad", ["", "exa mple.test", "-x.test", "[127.0.0.1]", "a..b"])
def test_invalid_domains(bad: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_domain(bad)


@pytest.mark.parametrize("bad", ["alice", "@example.test", "a b@example.test",
                                 '"quoted"@example.test', "a@", "a\n@example.test"])
def test_invalid_addresses(bad: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_address(bad)


# --- domains ----------------------------------------------------------------------------------

def test_domains(store: FakeStore, accounts: Accounts) -> None:
    assert run(accounts.add_domain("Example.TEST")) == "example.test"
    assert run(accounts.add_domain("example.test")) == "example.test"  # idempotent
    assert run(accounts.add_domain("bücher.example")) == "xn--bcher-kva.example"
    assert [d.name for d in run(accounts.list_domains())] == ["example.test",
                                                              "xn--bcher-kva.example"]
    assert run(accounts.remove_domain("XN--BCHER-KVA.example")) == "xn--bcher-kva.example"
    with pytest.raises(NotFound):
        run(accounts.remove_domain("xn--bcher-kva.example"))
    assert store.domains == {"example.test"}


def test_domain_with_users_cannot_be_removed(store: FakeStore, populated: Accounts) -> None:
    run(populated.add_alias("team@example.test", ["alice@example.test"]))
    [summary] = run(populated.list_domains())
    assert (summary.users, summary.aliases) == (2, 1)
    with pytest.raises(AccountError, match="2 users and 1 alias"):
        run(populated.remove_domain("example.test"))
    assert "example.test" in store.domains


# --- users ------------------------------------------------------------------------------------

def test_add_user_stores_canonical_key_and_argon2_hash(store: FakeStore,
                                                       accounts: Accounts) -> None:
    run(accounts.add_domain("example.test"))
    account = run(accounts.add_user("Carol.Smith@Example.Test", "pw"))
    assert account.address == "carol.smith@example.test"
    assert store.accounts["carol.smith@example.test"].password_hash.startswith("$argon2id$")
    assert [a.address for a in run(accounts.list_users())] == ["carol.smith@example.test"]


def test_add_user_needs_our_domain(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match=r"mailhouse domain add other\.test"):
        run(accounts.add_user("x@other.test", "pw"))


def test_add_user_twice(populated: Accounts) -> None:
    with pytest.raises(AlreadyExists):
        run(populated.add_user("ALICE@example.test", "pw"))


def test_user_cannot_shadow_an_alias(populated: Accounts) -> None:
    run(populated.add_alias("team@example.test", ["alice@example.test"]))
    with pytest.raises(AlreadyExists, match="is an alias"):
        run(populated.add_user("team@example.test", "pw"))


def test_set_password(store: FakeStore, populated: Accounts) -> None:
    assert run(populated.set_password("Alice@example.test", "new-pw")) == "alice@example.test"
    assert run(populated.authenticate("alice@example.test", "new-pw")) is not None
    assert run(populated.authenticate("alice@example.test", "alice-pw")) is None
    with pytest.raises(NotFound):
        run(populated.set_password("nobody@example.test", "pw"))


def test_remove_user_cleans_aliases(store: FakeStore, populated: Accounts) -> None:
    run(populated.add_alias("team@example.test", ["alice@example.test", "bob@example.test"]))
    run(populated.add_alias("bobs@example.test", ["bob@example.test"]))
    run(populated.add_alias("all@example.test", ["bobs@example.test", "alice@example.test"]))
    removal = run(populated.remove_user("bob@example.test"))
    assert removal.key == "bob@example.test"
    assert set(removal.aliases_changed) == {"team@example.test", "all@example.test"}
    assert removal.aliases_removed == ("bobs@example.test",)
    assert store.aliases == {"team@example.test": ("alice@example.test",),
                             "all@example.test": ("alice@example.test",)}
    with pytest.raises(NotFound):
        run(populated.remove_user("bob@example.test"))


# --- aliases ----------------------------------------------------------------------------------

def test_alias_add_merges_targets(store: FakeStore, populated: Accounts) -> None:
    assert run(populated.add_alias("Team@example.test", ["alice@example.test"])) == (
        "team@example.test", ("alice@example.test",))
    assert run(populated.add_alias("team@example.test", ["BOB@example.test",
                                                         "alice@example.test"])) == (
        "team@example.test", ("alice@example.test", "bob@example.test"))
    assert run(populated.list_aliases()) == [
        ("team@example.test", ("alice@example.test", "bob@example.test"))]


def test_catch_all_alias(store: FakeStore, populated: Accounts) -> None:
    run(populated.add_alias("@Example.TEST", ["alice@example.test"]))
    assert store.aliases == {"@example.test": ("alice@example.test",)}
    with pytest.raises(InvalidInput, match="not a domain"):
        run(populated.add_alias("x@example.test", ["@example.test"]))


def test_alias_targets_must_be_local(populated: Accounts) -> None:
    with pytest.raises(AccountError, match="outbound delivery"):
        run(populated.add_alias("fwd@example.test", ["someone@elsewhere.test"]))
    with pytest.raises(NotFound, match=r"mailhouse user add nobody@example\.test"):
        run(populated.add_alias("fwd@example.test", ["nobody@example.test"]))
    with pytest.raises(AccountError, match=r"mailhouse domain add other\.test"):
        run(populated.add_alias("fwd@other.test", ["alice@example.test"]))
    with pytest.raises(InvalidInput):
        run(populated.add_alias("fwd@example.test", []))


def test_alias_may_not_be_a_user(populated: Accounts) -> None:
    with pytest.raises(AlreadyExists, match="is a user"):
        run(populated.add_alias("alice@example.test", ["bob@example.test"]))


def test_alias_loops_are_refused(store: FakeStore, populated: Accounts) -> None:
    with pytest.raises(AccountError, match="loop"):
        run(populated.add_alias("a@example.test", ["a@example.test"]))
    run(populated.add_alias("a@example.test", ["alice@example.test"]))
    run(populated.add_alias("b@example.test", ["a@example.test"]))
    with pytest.raises(AccountError, match=r"a@example\.test → b@example\.test → a@example\.test"):
        run(populated.add_alias("a@example.test", ["b@example.test"]))
    assert store.aliases["a@example.test"] == ("alice@example.test",)


def test_remove_alias(store: FakeStore, populated: Accounts) -> None:
    run(populated.add_alias("a@example.test", ["alice@example.test"]))
    run(populated.add_alias("b@example.test", ["a@example.test"]))
    removal = run(populated.remove_alias("A@example.test"))
    assert removal.aliases_removed == ("b@example.test",)
    assert store.aliases == {}
    with pytest.raises(NotFound):
        run(populated.remove_alias("a@example.test"))


def test_verified_logins_are_cached_but_failures_never_are() -> None:
    from argon2 import PasswordHasher

    from mailhouse.service.accounts import Passwords

    passwords = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    stored = passwords.hash("right-password")
    assert not passwords.recently_verified(stored, "right-password")
    assert passwords.verify(stored, "right-password")
    assert passwords.recently_verified(stored, "right-password")
    assert not passwords.recently_verified(stored, "wrong-password")
    assert not passwords.verify(stored, "wrong-password")
    assert not passwords.recently_verified(stored, "wrong-password")
    # A new hash (password changed, or rehashed) is a new key: the old entry does not match.
    assert not passwords.recently_verified(passwords.hash("right-password"), "right-password")
    assert not Passwords(cache_ttl=0).recently_verified(stored, "right-password")
