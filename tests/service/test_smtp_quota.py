"""Quota in SMTP (service/mailbox_quota.py) through the MX and submission sessions against the
memory store: 452 4.2.2 at RCPT for a full mailbox (with and without MAIL FROM SIZE=), after
DATA only when every local target is over, and never a recipient dropped behind a 250."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from argon2 import PasswordHasher

from mailhouse.errors import Reply
from mailhouse.model import Address
from mailhouse.proto.smtp import events as ev
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.inbound import InboundPolicy, InboundService, InboundSession
from mailhouse.service.mailbox_quota import MAILBOX_FULL
from mailhouse.service.submission import SubmissionPolicy, SubmissionService, SubmissionSession
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store.base import DeliveryTarget, Quota
from mailhouse.store.memory import MemoryStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
MESSAGE = b"From: someone@sender.test\r\nSubject: hi\r\n\r\n" + b"x" * 200 + b"\r\n"
OWN = b"From: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


class World:
    def __init__(self, store: MemoryStore, accounts: Accounts, directory: DirectoryCache) -> None:
        self.store, self.accounts, self.directory = store, accounts, directory
        self.woken: list[int] = []
        self.mx = InboundService(store, directory, InboundPolicy("mx.example.test"))
        self.submission = SubmissionService(
            store, directory, LoginGuard(accounts, LoginThrottle(5, 60.0), 0.0),
            SubmissionPolicy("mx.example.test"), on_queued=lambda: self.woken.append(1))

    async def quota(self, address: str, limit: int | None) -> None:
        await self.store.set_quota(address, limit)
        await self.directory.refresh()

    async def fill(self, address: str, octets: int) -> None:
        """Put `octets` in the account's INBOX, whatever its quota."""
        account = await self.store.get_account(address)
        assert account is not None
        spool = self.store.new_spool()
        await spool.write(b"x" * octets)
        await self.store.deliver(spool, [DeliveryTarget(account.id, ignore_quota=True)])

    async def usage(self, address: str) -> Quota:
        account = await self.store.get_account(address)
        assert account is not None
        quota = await self.store.get_quota(account.id)
        assert quota is not None
        return quota

    async def count(self, address: str) -> int:
        account = await self.store.get_account(address)
        assert account is not None
        return sum(m.message_count for m in await self.store.list_mailboxes(account.id))


def run(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        accounts = Accounts(store, Passwords(CHEAP))
        await accounts.add_domain("example.test")
        for user in ("alice", "bob", "carol"):
            await accounts.add_user(f"{user}@example.test", "pw-" + user)
        await accounts.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        directory = DirectoryCache(store)
        await directory.refresh()
        await scenario(World(store, accounts, directory))

    asyncio.run(main())


Session = InboundSession | SubmissionSession


def mail(session: Session, sender: str = "someone@sender.test", size: int | None = None) -> None:
    assert session.mail_from(ev.MailFrom(Address.parse(sender), size, False, False)).code == 250


async def rcpt(session: Session, address: str) -> Reply:
    """As net/smtp.py asks: the synchronous answer, else the awaited recheck."""
    event = ev.RcptTo(Address.parse(address))
    return session.rcpt_to(event) or await session.rcpt_recheck(event)


async def data(session: Session, message: bytes = MESSAGE) -> Reply:
    if session.data_start():
        await session.write()
    if session.data_chunk(message):
        await session.write()
    return await session.data_complete(ev.DataComplete(len(message), 0))


async def login(world: World) -> SubmissionSession:
    session = world.submission.session("192.0.2.1:5000")
    session.on_helo(ev.Helo("client.test", True))
    reply = await session.authenticate(ev.AuthCredentials("PLAIN", "", "alice@example.test",
                                                          "pw-alice"))
    assert reply.code == 235
    return session


# --- RCPT -------------------------------------------------------------------------------------

def test_rcpt_refuses_an_account_at_its_limit() -> None:
    async def scenario(world: World) -> None:
        await world.quota("alice@example.test", 1000)
        await world.fill("alice@example.test", 999)
        session = world.mx.session("192.0.2.1:25")
        mail(session)
        assert (await rcpt(session, "alice@example.test")).code == 250  # one octet left
        await world.fill("alice@example.test", 1)  # now exactly at the limit
        mail(session)
        assert await rcpt(session, "alice@example.test") == MAILBOX_FULL
        assert MAILBOX_FULL.code == 452 and MAILBOX_FULL.enhanced == "4.2.2"
        assert (await rcpt(session, "alice+tag@example.test")).code == 452
        assert (await rcpt(session, "bob@example.test")).code == 250
        assert session.envelope().recipients == (Address.parse("bob@example.test"),)
        assert (await data(session)).code == 250
        assert await world.count("alice@example.test") == 2  # only the two fills
        assert await world.count("bob@example.test") == 1

    run(scenario)


def test_rcpt_with_size_crossing_the_limit() -> None:
    async def scenario(world: World) -> None:
        await world.quota("alice@example.test", 1000)
        await world.fill("alice@example.test", 100)
        session = world.mx.session("192.0.2.1:25")
        mail(session, size=900)  # 100 + 900 = the limit: allowed
        assert (await rcpt(session, "alice@example.test")).code == 250
        mail(session, size=901)
        assert await rcpt(session, "alice@example.test") == MAILBOX_FULL
        mail(session)  # no SIZE=: only a full account is refused at RCPT
        assert (await rcpt(session, "alice@example.test")).code == 250
        await world.quota("alice@example.test", 0)  # a zero quota takes nothing
        mail(session, size=1)
        assert await rcpt(session, "alice@example.test") == MAILBOX_FULL

    run(scenario)


def test_unlimited_accounts_are_answered_from_memory() -> None:
    async def scenario(world: World) -> None:
        await world.quota("alice@example.test", 10)

        async def no_reads(account_id: int) -> Quota | None:
            raise AssertionError("read the usage of an account without a quota")

        world.store.get_quota = no_reads  # type: ignore[method-assign]
        session = world.mx.session("192.0.2.1:25")
        mail(session, size=10**9)
        assert session.rcpt_to(ev.RcptTo(Address.parse("bob@example.test"))) is not None
        assert session.rcpt_to(ev.RcptTo(Address.parse("alice@example.test"))) is None

    run(scenario)


def test_an_alias_with_one_full_member_is_refused_whole() -> None:
    async def scenario(world: World) -> None:
        await world.quota("bob@example.test", 0)
        session = world.mx.session("192.0.2.1:25")
        mail(session)
        assert await rcpt(session, "team@example.test") == MAILBOX_FULL
        assert (await rcpt(session, "alice@example.test")).code == 250

    run(scenario)


def test_a_stale_limit_and_a_failing_read() -> None:
    async def scenario(world: World) -> None:
        await world.quota("alice@example.test", 0)
        await world.store.set_quota("alice@example.test", None)  # the snapshot has not seen it
        session = world.mx.session("192.0.2.1:25")
        mail(session)
        assert (await rcpt(session, "alice@example.test")).code == 250
        await world.quota("alice@example.test", 0)

        async def broken(account_id: int) -> Quota | None:
            raise OSError("disk")

        world.store.get_quota = broken  # type: ignore[method-assign]
        mail(session)
        reply = await rcpt(session, "alice@example.test")
        assert (reply.code, reply.enhanced) == (451, "4.3.0")

    run(scenario)


# --- after DATA -------------------------------------------------------------------------------

def test_every_target_over_quota_after_data_is_452_and_nothing_stored() -> None:
    async def scenario(world: World) -> None:
        await world.quota("alice@example.test", 100)  # empty, but the message is larger
        await world.quota("bob@example.test", 100)
        session = world.mx.session("192.0.2.1:25")
        mail(session)
        assert (await rcpt(session, "team@example.test")).code == 250
        assert await data(session) == MAILBOX_FULL
        assert await world.count("alice@example.test") == 0
        assert await world.count("bob@example.test") == 0
        mail(session)
        assert (await rcpt(session, "carol@example.test")).code == 250
        assert (await data(session)).code == 250

    run(scenario)


def test_mixed_transaction_drops_nobody() -> None:
    async def scenario(world: World) -> None:
        await world.quota("alice@example.test", 100)
        session = world.mx.session("192.0.2.1:25")
        mail(session)
        assert (await rcpt(session, "alice@example.test")).code == 250
        assert (await rcpt(session, "bob@example.test")).code == 250
        reply = await data(session)
        assert reply.code == 250
        assert await world.count("alice@example.test") == 1  # the grace of one message
        assert await world.count("bob@example.test") == 1
        used = await world.usage("alice@example.test")
        assert used.limit == 100 and used.used > 100
        mail(session)  # and now alice is full: refused at RCPT
        assert await rcpt(session, "alice@example.test") == MAILBOX_FULL

    run(scenario)


def test_a_limit_set_between_rcpt_and_data_still_drops_nobody() -> None:
    async def scenario(world: World) -> None:
        session = world.mx.session("192.0.2.1:25")
        mail(session)
        assert (await rcpt(session, "alice@example.test")).code == 250
        assert (await rcpt(session, "bob@example.test")).code == 250
        await world.store.set_quota("alice@example.test", 10)  # the snapshot has not seen it
        assert (await data(session)).code == 250
        assert await world.count("alice@example.test") == 1
        assert await world.count("bob@example.test") == 1

    run(scenario)


# --- submission -------------------------------------------------------------------------------

def test_submission_rcpt_and_after_data() -> None:
    async def scenario(world: World) -> None:
        session = await login(world)
        await world.quota("bob@example.test", 0)
        mail(session, "alice@example.test")
        assert await rcpt(session, "bob@example.test") == MAILBOX_FULL
        assert (await rcpt(session, "dave@remote.test")).code == 250  # the queue: no quota
        assert (await data(session, OWN)).code == 250
        assert await world.count("bob@example.test") == 0
        assert len(await world.store.queue_list()) == 1

        await world.quota("bob@example.test", 10)  # empty but smaller than the message
        mail(session, "alice@example.test")
        assert (await rcpt(session, "bob@example.test")).code == 250
        assert await data(session, OWN) == MAILBOX_FULL  # nothing else to deliver
        assert await world.count("bob@example.test") == 0
        assert len(await world.store.queue_list()) == 1

        mail(session, "alice@example.test")  # with a remote recipient: delivered anyway
        assert (await rcpt(session, "bob@example.test")).code == 250
        assert (await rcpt(session, "dave@remote.test")).code == 250
        assert (await data(session, OWN)).code == 250
        assert await world.count("bob@example.test") == 1
        assert len(await world.store.queue_list()) == 2

        mail(session, "alice@example.test", size=10**6)
        await world.quota("carol@example.test", 10**6 - 1)
        assert await rcpt(session, "carol@example.test") == MAILBOX_FULL  # SIZE= crosses it

    run(scenario)
