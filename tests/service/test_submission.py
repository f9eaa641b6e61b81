"""The submission session against the memory store: routing, queueing, DKIM, failure paths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from argon2 import PasswordHasher

from mailhouse.errors import ConfigError, Reply, StorageFull
from mailhouse.model import Account, Address
from mailhouse.proto.smtp import events as ev
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.submission import (
    SubmissionPolicy,
    SubmissionService,
    SubmissionSession,
    normalize_grants,
    parse_mailbox,
)
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store.memory import MemoryStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
MESSAGE = b"From: alice@example.test\r\nSubject: hi\r\n\r\nHello \xc3\xa9.\r\n"


class Signer:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[bytes, str]] = []
        self.fail = fail

    def sign(self, message: bytes, domain: str) -> bytes:
        self.calls.append((message, domain))
        if self.fail:
            raise RuntimeError("no key")
        return b"DKIM-Signature: v=1; d=" + domain.encode() + b";\n\tb=abc\n"


Scenario = Callable[[MemoryStore, SubmissionService, list[int]], Awaitable[None]]


def run(scenario: Scenario, signer: Signer | None = None,
        senders: dict[str, frozenset[str]] | None = None) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        accounts = Accounts(store, Passwords(CHEAP))
        await accounts.add_domain("example.test")
        await accounts.add_user("alice@example.test", "pw-alice")
        await accounts.add_user("bob@example.test", "pw-bob")
        await accounts.add_alias("team@example.test", ["alice@example.test"])
        await accounts.add_alias("all@example.test", ["team@example.test", "bob@example.test"])
        await accounts.add_alias("@example.test", ["alice@example.test"])  # catch-all
        directory = DirectoryCache(store)
        await directory.refresh()
        woken: list[int] = []
        service = SubmissionService(
            store, directory, LoginGuard(accounts, LoginThrottle(5, 60.0), 0.0),
            SubmissionPolicy("mx.example.test", senders=senders or {}), signer=signer,
            on_queued=lambda: woken.append(1))
        await scenario(store, service, woken)

    asyncio.run(main())


async def login(service: SubmissionService) -> SubmissionSession:
    session = service.session("192.0.2.1:5000")
    session.tls = "TLSv1.3 TLS_AES_256_GCM_SHA384"
    session.on_helo(ev.Helo("client.test", True))
    reply = await session.authenticate(ev.AuthCredentials("PLAIN", "", "alice@example.test",
                                                          "pw-alice"))
    assert reply.code == 235
    return session


async def send(session: SubmissionSession, recipients: list[str], message: bytes = MESSAGE,
               sender: str = "alice@example.test") -> Reply:
    assert session.mail_from(ev.MailFrom(Address.parse(sender), None, False, False)).code == 250
    for rcpt in recipients:
        reply = session.rcpt_to(ev.RcptTo(Address.parse(rcpt)))
        assert reply is not None and reply.code == 250, rcpt
    assert not session.data_start()
    for i in range(0, len(message), 7):  # content arrives in pieces
        assert not session.data_chunk(message[i : i + 7])
    return await session.data_complete(ev.DataComplete(len(message), 0))


async def inbox(store: MemoryStore, address: str) -> list[bytes]:
    account = await store.get_account(address)
    assert account is not None
    box = next(m for m in await store.list_mailboxes(account.id) if m.name == "INBOX")
    return [b"".join([c async for c in store.read_message(m)])
            for m in await store.list_messages(box.id)]


def test_remote_recipients_are_queued_signed_and_the_worker_woken() -> None:
    signer = Signer()

    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        session = await login(service)
        reply = await send(session, ["carol@remote.test", "bob@example.test",
                                     "carol@remote.test", "dave@other.test"])
        assert reply.code == 250
        [queued] = await store.queue_list()
        assert queued.sender == "alice@example.test"
        assert [r.address for r in queued.recipients] == ["carol@remote.test", "dave@other.test"]
        assert queued.body_8bit  # 8-bit content, though the client did not say BODY=8BITMIME
        blob = b"".join([c async for c in store.read_blob(queued.blob_id)])
        assert blob.startswith(b"DKIM-Signature: v=1; d=example.test;\r\n\tb=abc\r\nReceived: ")
        [(signed, domain)] = signer.calls
        assert domain == "example.test" and blob.endswith(signed) and signed.endswith(MESSAGE)
        assert b"with ESMTPSA" in signed and b" for <" not in signed  # several recipients
        assert await inbox(store, "bob@example.test") == [blob]  # one copy of the bytes
        assert woken == [1]

    run(scenario, signer)


def test_local_only_mail_is_not_signed_and_does_not_wake_the_queue() -> None:
    signer = Signer()

    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        session = await login(service)
        assert (await send(session, ["bob@example.test"])).code == 250
        assert signer.calls == [] and woken == [] and await store.queue_list() == []

    run(scenario, signer)


def test_signer_failure_sends_unsigned() -> None:
    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        session = await login(service)
        assert (await send(session, ["carol@remote.test"])).code == 250
        [queued] = await store.queue_list()
        blob = b"".join([c async for c in store.read_blob(queued.blob_id)])
        assert blob.startswith(b"Received: ")

    run(scenario, Signer(fail=True))


def test_from_in_a_granted_foreign_domain_is_not_signed() -> None:
    signer = Signer()
    grants = normalize_grants({"alice@example.test": ("@partner.test",)})

    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        session = await login(service)
        message = MESSAGE.replace(b"alice@example.test", b"alice@partner.test")
        reply = await send(session, ["carol@remote.test"], message, sender="x@partner.test")
        assert reply.code == 250
        assert signer.calls == []  # we hold no key for a domain we do not host

    run(scenario, signer, grants)


def test_sender_ownership_rules() -> None:
    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        session = await login(service)
        alice = session.account
        assert alice is not None
        allowed = {
            "alice@example.test": True,
            "team@example.test": True,  # alias → alice
            "all@example.test": True,  # alias → alias → alice
            "team+x@example.test": True,
            "bob@example.test": False,
            "random@example.test": False,  # the catch-all is not a licence to be anyone
            "alice@remote.test": False,
        }
        for text, expected in allowed.items():
            assert service.may_send_as(alice, Address.parse(text)) is expected, text
        assert session.mail_from(ev.MailFrom(None, None, False, False)).code == 553

    run(scenario)


def test_store_full_and_unauthenticated_paths() -> None:
    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        anonymous = service.session("192.0.2.9:1")
        sender = Address.parse("alice@example.test")
        assert anonymous.mail_from(ev.MailFrom(sender, None, False, False)).code == 530
        assert anonymous.rcpt_to(ev.RcptTo(sender)) is None
        assert (await anonymous.rcpt_recheck(ev.RcptTo(sender))).code == 530
        session = await login(service)

        async def full(*args: object, **kwargs: object) -> object:
            raise StorageFull()

        store.deliver = full  # type: ignore[method-assign]
        reply = await send(session, ["carol@remote.test"])
        assert (reply.code, reply.enhanced) == (452, "4.3.1")
        assert woken == []

    run(scenario)


def test_auth_outcomes() -> None:
    async def scenario(store: MemoryStore, service: SubmissionService, woken: list[int]) -> None:
        session = service.session("[2001:db8::1]:5000")
        assert session.ip == "2001:db8::1"
        wrong = ev.AuthCredentials("LOGIN", "", "alice@example.test", "nope")
        unknown = ev.AuthCredentials("LOGIN", "", "ghost@example.test", "nope")
        first = await session.authenticate(wrong)
        assert first == await session.authenticate(unknown)
        assert (first.code, first.enhanced) == (535, "5.7.8")
        for _ in range(3):
            await session.authenticate(unknown)
        right = ev.AuthCredentials("LOGIN", "", "alice@example.test", "pw-alice")
        assert (await session.authenticate(right)).code == 454  # the /64 is locked
        assert session.account is None

        async def broken(username: str, password: str) -> Account | None:
            raise RuntimeError("database gone")

        other = service.session("192.0.2.50:1")
        service.guard.accounts.authenticate = broken  # type: ignore[method-assign]
        assert (await other.authenticate(right)).code == 454

    run(scenario)


def test_grants_are_validated_and_canonical() -> None:
    grants = normalize_grants({"Alice@Example.TEST": ("CEO@example.test", "@Bücher.example")})
    assert grants == {"alice@example.test": frozenset({"ceo@example.test",
                                                       "@xn--bcher-kva.example"})}
    with pytest.raises(ConfigError, match=r"submission\.senders\.alice"):
        normalize_grants({"alice": ("x@example.test",)})
    with pytest.raises(ConfigError, match="neither an address"):
        normalize_grants({"alice@example.test": ("@",)})


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("alice@example.test", "alice@example.test"),
        ('"Smith, A." <alice@example.test>', "alice@example.test"),
        ('"bob@example.test" <alice@example.test>', "alice@example.test"),
        ("(a comment) alice@example.test (another)", "alice@example.test"),
        ("=?utf-8?q?Bob?= <alice@example.test>", "alice@example.test"),
        ("<alice@example.test>bob@example.test", None),
        ("alice@example.test, bob@example.test", None),
        ("bob@example.test <alice@example.test>", None),
        ("Friends: alice@example.test;", None),
        ("<alice@example.test> <bob@example.test>", None),
        ("Alice (unclosed <alice@example.test>", None),
        ('"unclosed <alice@example.test>', None),
        ("<@relay.test:alice@example.test>", None),
        ("alice", None),
        ("", None),
    ],
)
def test_parse_mailbox_is_strict(text: str, address: str | None) -> None:
    parsed = parse_mailbox(text)
    assert (str(parsed) if parsed else None) == address
