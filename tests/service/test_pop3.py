"""The POP3 maildrop service against both real stores: logins and the exclusive lock (RFC 1939
§8, RFC 2449 §8.1.1 [IN-USE]), the snapshot, UIDLs (RFC 1939 §7, Dovecot's %08Xu%08Xv), sizes,
and the UPDATE state (RFC 1939 §6) as ordinary expunges."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailhouse.errors import MailError
from mailhouse.model import Account
from mailhouse.proto.pop3.events import LoginResult, MaildropEntry
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.mailfiles import import_mbox
from mailhouse.service.pop3 import Maildrop, MessageGone, Pop3Service, uidl
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store import STORE_KINDS, open_store
from mailhouse.store.base import (
    DeliveryTarget,
    ExpungedMessage,
    MailboxInfo,
    MaildropLock,
    MessageInfo,
    Store,
)
from mailhouse.store.memory import MemoryStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
IP = "192.0.2.10"
ALICE = "alice@example.test"
PASSWORD = "correct horse"


@dataclass
class Env:
    store: Store
    accounts: Accounts
    service: Pop3Service
    alice: Account
    data_dir: Path

    async def deliver(self, data: bytes, account: Account | None = None) -> None:
        spool = self.store.new_spool()
        await spool.write(data)
        await self.store.deliver(spool, [DeliveryTarget((account or self.alice).id)])

    async def inbox(self, account: Account | None = None) -> MailboxInfo:
        found = await self.store.get_mailbox((account or self.alice).id, "INBOX")
        assert found is not None
        return found

    async def stored(self) -> list[MessageInfo]:
        return await self.store.list_messages((await self.inbox()).id)

    async def login(self, password: str = PASSWORD, user: str = ALICE) -> Maildrop:
        result, maildrop = await self.service.login(IP, user, password)
        assert result is LoginResult.OK
        assert maildrop is not None
        return maildrop


Scenario = Callable[[Env], Awaitable[None]]


def run(scenario: Scenario, tmp_path: Path, kind: str = "memory", *, store: Store | None = None,
        limit: int = 5, reopen: bool = False) -> None:
    """Open a store, make alice, run the scenario; with `reopen`, run it a second time on the
    same data directory (the scenario sees the account already there)."""

    async def main() -> None:
        data_dir = tmp_path / "data"
        for round_ in range(2 if reopen else 1):
            opened = store if store is not None else open_store(data_dir, kind)
            await opened.open()
            try:
                accounts = Accounts(opened, Passwords(CHEAP))
                if round_ == 0:
                    await accounts.add_domain("example.test")
                    alice = await accounts.add_user(ALICE, PASSWORD)
                else:
                    found = await opened.get_account(ALICE)
                    assert found is not None
                    alice = found
                guard = LoginGuard(accounts, LoginThrottle(limit, 60.0), delay=0.0)
                env = Env(opened, accounts, Pop3Service(opened, guard), alice, data_dir)
                await scenario(env)
            finally:
                await opened.close()

    asyncio.run(main())


def message(n: int, extra: bytes = b"") -> bytes:
    return b"From: bob@example.org\r\nSubject: %d\r\n\r\nbody %d\r\n%s" % (n, n, extra)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.001)


async def read(maildrop: Maildrop, index: int) -> bytes:
    return b"".join([chunk async for chunk in maildrop.read(index)])


kinds = pytest.mark.parametrize("kind", STORE_KINDS)


# --- login ------------------------------------------------------------------------------------
@kinds
def test_login_opens_the_inbox(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(message(1))
        await env.deliver(message(2, b"x" * 100))
        archive = await env.store.get_mailbox(env.alice.id, "Archive")
        assert archive is not None
        spool = env.store.new_spool()
        await spool.write(message(3))
        await env.store.deliver(spool, [DeliveryTarget(env.alice.id, "Archive")])

        maildrop = await env.login(user="Alice@Example.TEST")  # the account's canonical key
        inbox = await env.inbox()
        assert maildrop.account == env.alice
        assert maildrop.mailbox == inbox
        assert maildrop.entries == [  # only INBOX is the maildrop
            MaildropEntry(size=len(message(1)), uidl=uidl(1, inbox.uidvalidity)),
            MaildropEntry(size=len(message(2, b"x" * 100)), uidl=uidl(2, inbox.uidvalidity)),
        ]
        assert env.service.is_locked(env.alice.id)
        maildrop.release()
        assert not env.service.is_locked(env.alice.id)

    run(scenario, tmp_path, kind)


def test_wrong_password_and_unknown_user_fail_without_a_lock(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        assert await env.service.login(IP, ALICE, "wrong") == (LoginResult.FAILED, None)
        assert await env.service.login(IP, "nobody@example.test", PASSWORD) == (
            LoginResult.FAILED, None)
        assert await env.service.login(IP, "not an address", PASSWORD) == (
            LoginResult.FAILED, None)
        assert not env.service.is_locked(env.alice.id)
        (await env.login()).release()

    run(scenario, tmp_path)


def test_throttled_after_the_failure_limit(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for _ in range(2):
            assert (await env.service.login(IP, ALICE, "wrong"))[0] is LoginResult.FAILED
        # Locked: refused without a check, even with the right password (security.md §3).
        assert await env.service.login(IP, ALICE, PASSWORD) == (LoginResult.THROTTLED, None)
        assert not env.service.is_locked(env.alice.id)

    run(scenario, tmp_path, limit=2)


@kinds
def test_second_session_is_in_use_until_the_first_releases(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        first = await env.login()
        assert await env.service.login(IP, ALICE, PASSWORD) == (LoginResult.IN_USE, None)
        # [IN-USE] only after right credentials (RFC 2449 §8.1.1): a guesser learns nothing.
        assert await env.service.login(IP, ALICE, "wrong") == (LoginResult.FAILED, None)
        bob = await env.accounts.add_user("bob@example.test", "pw")
        other = await env.login("pw", "bob@example.test")  # the lock is per account
        assert other.account == bob

        first.release()
        second = await env.login()
        first.release()  # idempotent: an old session's late release frees nothing now
        assert env.service.is_locked(env.alice.id)
        assert await env.service.login(IP, ALICE, PASSWORD) == (LoginResult.IN_USE, None)
        second.release()
        other.release()
        (await env.login()).release()

    run(scenario, tmp_path, kind)


@kinds
def test_parallel_logins_get_one_maildrop(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        results = await asyncio.gather(
            *(env.service.login(IP, ALICE, PASSWORD) for _ in range(6))
        )
        assert sorted(r.name for r, _ in results) == ["IN_USE"] * 5 + ["OK"]

    run(scenario, tmp_path, kind)


class FlakyStore(MemoryStore):
    """A memory store whose chosen calls fail (MailError, as the real store reports disk and
    database failures) or wait for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: set[str] = set()
        self.gate: dict[str, asyncio.Event] = {}

    async def _check(self, name: str) -> None:
        if name in self.gate:
            await self.gate[name].wait()
        if name in self.fail:
            raise MailError()

    async def get_account(self, address: str) -> Account | None:
        await self._check("get_account")
        return await super().get_account(address)

    async def lock_maildrop(self, account_id: int) -> MaildropLock | None:
        await self._check("lock_maildrop")
        return await super().lock_maildrop(account_id)

    async def list_messages(self, mailbox_id: int) -> list[MessageInfo]:
        await self._check("list_messages")
        return await super().list_messages(mailbox_id)

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        await self._check("expunge")
        return await super().expunge(mailbox_id, uids)


@pytest.mark.parametrize("failing", ["get_account", "lock_maildrop", "list_messages"])
def test_store_failure_at_login_is_sys_temp(failing: str, tmp_path: Path) -> None:
    store = FlakyStore()

    async def scenario(env: Env) -> None:
        store.fail.add(failing)
        assert await env.service.login(IP, ALICE, PASSWORD) == (LoginResult.SYS_TEMP, None)
        assert not env.service.is_locked(env.alice.id)
        store.fail.clear()
        (await env.login()).release()

    run(scenario, tmp_path, store=store)


def test_missing_inbox_is_sys_perm(tmp_path: Path) -> None:
    store = FlakyStore()

    async def scenario(env: Env) -> None:
        async def no_mailbox(account_id: int, name: str) -> MailboxInfo | None:
            return None

        store.get_mailbox = no_mailbox  # type: ignore[method-assign]
        assert await env.service.login(IP, ALICE, PASSWORD) == (LoginResult.SYS_PERM, None)
        assert not env.service.is_locked(env.alice.id)

    run(scenario, tmp_path, store=store)


def test_a_login_cancelled_while_listing_frees_the_lock(tmp_path: Path) -> None:
    store = FlakyStore()

    async def scenario(env: Env) -> None:
        store.gate["list_messages"] = asyncio.Event()
        task = asyncio.create_task(env.service.login(IP, ALICE, PASSWORD))
        await until(lambda: env.service.is_locked(env.alice.id))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not env.service.is_locked(env.alice.id)
        del store.gate["list_messages"]
        (await env.login()).release()

    run(scenario, tmp_path, store=store)


def test_a_login_cancelled_while_locking_keeps_no_lock(tmp_path: Path) -> None:
    store = FlakyStore()

    async def scenario(env: Env) -> None:
        store.gate["lock_maildrop"] = asyncio.Event()
        task = asyncio.create_task(env.service.login(IP, ALICE, PASSWORD))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not env.service.is_locked(env.alice.id)
        del store.gate["lock_maildrop"]
        (await env.login()).release()

    run(scenario, tmp_path, store=store)


@kinds
def test_a_session_of_another_service_is_in_use(kind: str, tmp_path: Path) -> None:
    """Two services on one store (two processes would each have theirs): the lock is the
    store's, not the service's."""

    async def scenario(env: Env) -> None:
        first = await env.login()
        other = Pop3Service(env.store, LoginGuard(env.accounts, LoginThrottle(5, 60.0), delay=0.0))
        assert await other.login(IP, ALICE, PASSWORD) == (LoginResult.IN_USE, None)
        first.release()
        result, maildrop = await other.login(IP, ALICE, PASSWORD)
        assert result is LoginResult.OK and maildrop is not None
        assert other.is_locked(env.alice.id) and not env.service.is_locked(env.alice.id)
        maildrop.release()

    run(scenario, tmp_path, kind)


# --- the snapshot -----------------------------------------------------------------------------
@kinds
def test_mail_arriving_during_a_session_waits_for_the_next(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(message(1))
        maildrop = await env.login()
        await env.deliver(message(2))
        assert [e.uidl for e in maildrop.entries] == [uidl(1, maildrop.mailbox.uidvalidity)]
        assert len(await env.stored()) == 2
        await maildrop.commit([])
        maildrop.release()
        later = await env.login()
        assert len(later.entries) == 2
        assert await read(later, 1) == message(2)
        later.release()

    run(scenario, tmp_path, kind)


# --- UIDL and sizes ---------------------------------------------------------------------------
def test_uidl_is_dovecots_default_format() -> None:
    # %08Xu%08Xv: UID then UIDVALIDITY, 8 upper-case hex digits each.
    assert uidl(1, 0x4A3B2C1D) == "000000014A3B2C1D"
    assert uidl(0xFFFFFFFF, 1) == "FFFFFFFF00000001"
    assert uidl(26, 1_700_000_000) == "0000001A6553F100"


@kinds
def test_uidls_are_stable_across_sessions_deletions_and_reopening(
    kind: str, tmp_path: Path
) -> None:
    seen: list[list[str]] = []

    async def scenario(env: Env) -> None:
        if not seen:
            for n in range(1, 5):
                await env.deliver(message(n))
            maildrop = await env.login()
            inbox = await env.inbox()
            assert [e.uidl for e in maildrop.entries] == [
                f"{uid:08X}{inbox.uidvalidity:08X}" for uid in (1, 2, 3, 4)
            ]
            assert all(re.fullmatch(r"[0-9A-F]{16}", e.uidl) for e in maildrop.entries)
            seen.append([e.uidl for e in maildrop.entries])
            await maildrop.commit([0])  # the numbers of the others move, their UIDLs must not
            maildrop.release()
        maildrop = await env.login()
        seen.append([e.uidl for e in maildrop.entries])
        maildrop.release()

    run(scenario, tmp_path, kind, reopen=kind == "sqlite")
    assert all(uidls == seen[0][1:] for uidls in seen[1:])
    assert len(seen) == (3 if kind == "sqlite" else 2)


@kinds
def test_retr_sends_exactly_the_listed_octets(kind: str, tmp_path: Path) -> None:
    big = b"".join(b"line %06d of a long message\r\n" % i for i in range(20_000))  # ~600 kB
    bodies = [message(1), message(2, b".\r\n..\r\n.leading dot\r\n"), big]

    async def scenario(env: Env) -> None:
        for body in bodies:
            await env.deliver(body)
        maildrop = await env.login()
        stored = await env.stored()
        for index, (entry, info, body) in enumerate(
            zip(maildrop.entries, stored, bodies, strict=True)
        ):
            data = await read(maildrop, index)
            assert data == body  # not byte-stuffed here: the core does that
            assert len(data) == entry.size == info.size
            if kind == "sqlite":  # the blob on disk is the same octets
                assert (env.data_dir / "blobs" / info.blob_id).read_bytes() == data
        maildrop.release()

    run(scenario, tmp_path, kind)


@kinds
def test_imported_lf_mail_is_listed_with_its_crlf_size(kind: str, tmp_path: Path) -> None:
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From x Thu Jan  1 00:00:00 2004\nSubject: lf\n\none\ntwo\n\n")

    async def scenario(env: Env) -> None:
        report = await import_mbox(env.store, env.alice, mbox)
        assert report.messages == 1
        maildrop = await env.login()
        data = await read(maildrop, 0)
        assert data == b"Subject: lf\r\n\r\none\r\ntwo\r\n"
        assert maildrop.entries[0].size == len(data)
        maildrop.release()

    run(scenario, tmp_path, kind)


@kinds
def test_reading_can_stop_early(kind: str, tmp_path: Path) -> None:
    """TOP reads the headers and a few lines, then closes the iterator."""

    async def scenario(env: Env) -> None:
        await env.deliver(message(1, b"y" * 500_000))
        maildrop = await env.login()
        chunks = maildrop.read(0)
        first = await anext(chunks)
        assert first.startswith(b"From: bob@example.org\r\n")
        await chunks.aclose()
        assert await read(maildrop, 0) == message(1, b"y" * 500_000)
        maildrop.release()

    run(scenario, tmp_path, kind)


def test_bad_indexes_and_use_after_release(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(message(1))
        maildrop = await env.login()
        for index in (-1, 1):
            with pytest.raises(IndexError):
                maildrop.read(index)
            with pytest.raises(IndexError):
                await maildrop.commit([index])
        maildrop.release()
        assert maildrop.released
        with pytest.raises(RuntimeError):
            maildrop.read(0)
        with pytest.raises(RuntimeError):
            await maildrop.commit([0])
        assert len(await env.stored()) == 1

    run(scenario, tmp_path)


@kinds
def test_a_message_expunged_by_imap_meanwhile(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(message(1))
        await env.deliver(message(2))
        maildrop = await env.login()
        await env.store.expunge((await env.inbox()).id, [1])  # an IMAP client did this
        with pytest.raises(MessageGone):
            await anext(maildrop.read(0))
        assert await read(maildrop, 1) == message(2)
        await maildrop.commit([0, 1])  # already gone counts as removed
        maildrop.release()
        assert await env.stored() == []

    run(scenario, tmp_path, kind)


# --- the UPDATE state -------------------------------------------------------------------------
@kinds
def test_commit_expunges_the_deleted_messages(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for n in range(1, 5):
            await env.deliver(message(n))
        before = await env.inbox()
        maildrop = await env.login()
        await maildrop.commit([2, 0])
        maildrop.release()
        assert [m.uid for m in await env.stored()] == [2, 4]
        after = await env.inbox()
        # An ordinary expunge: one MODSEQ, history for IMAP QRESYNC (RFC 7162 §3.2.10).
        assert after.highest_modseq == before.highest_modseq + 1
        assert await env.store.list_expunged(after.id, before.highest_modseq) == [
            ExpungedMessage(1, after.highest_modseq),
            ExpungedMessage(3, after.highest_modseq),
        ]
        with pytest.raises(RuntimeError):
            await maildrop.commit([1])
        again = await env.login()
        assert [await read(again, i) for i in range(2)] == [message(2), message(4)]
        again.release()

    run(scenario, tmp_path, kind)


@kinds
def test_a_session_that_never_commits_deletes_nothing(kind: str, tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for n in range(1, 4):
            await env.deliver(message(n))
        before = await env.inbox()
        maildrop = await env.login()
        maildrop.release()  # the connection dropped after DELE 1, DELE 2: no UPDATE state
        assert [m.uid for m in await env.stored()] == [1, 2, 3]
        assert (await env.inbox()).highest_modseq == before.highest_modseq
        assert await env.store.list_expunged(before.id) == []

    run(scenario, tmp_path, kind)


def test_a_failed_commit_raises_and_removes_nothing(tmp_path: Path) -> None:
    store = FlakyStore()

    async def scenario(env: Env) -> None:
        await env.deliver(message(1))
        maildrop = await env.login()
        store.fail.add("expunge")
        with pytest.raises(MailError):
            await maildrop.commit([0])
        maildrop.release()
        assert not env.service.is_locked(env.alice.id)
        assert len(await env.stored()) == 1

    run(scenario, tmp_path, store=store)


def test_the_lock_holds_until_the_removal_is_done(tmp_path: Path) -> None:
    """The client hangs up right after QUIT: the transport releases (and may cancel the commit)
    while the expunge is still on its way; the next session must not list what it removes."""
    store = FlakyStore()

    async def scenario(env: Env) -> None:
        await env.deliver(message(1))
        await env.deliver(message(2))
        maildrop = await env.login()
        gate = store.gate["expunge"] = asyncio.Event()
        commit = asyncio.create_task(maildrop.commit([0]))
        await asyncio.sleep(0)
        maildrop.release()
        commit.cancel()
        assert env.service.is_locked(env.alice.id)
        assert await env.service.login(IP, ALICE, PASSWORD) == (LoginResult.IN_USE, None)
        gate.set()
        await until(lambda: not env.service.is_locked(env.alice.id))
        assert [m.uid for m in await env.stored()] == [2]
        later = await env.login()
        assert len(later.entries) == 1
        later.release()

    run(scenario, tmp_path, store=store)
