"""An in-memory stand-in for store.base.Store, just faithful enough for the service and CLI
tests: the contract points they rely on are the ones base.py documents (add_account raises
KeyError for a duplicate and creates DEFAULT_MAILBOXES, deliver answers PERMANENT for a mailbox
that does not exist, the spool is consumed, directory() is a snapshot)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from mailhouse.message.structure import MessageStructure, parse_message
from mailhouse.model import Account, Directory
from mailhouse.store.base import (
    DEFAULT_MAILBOXES,
    DeliveryTarget,
    MailboxInfo,
    MessageInfo,
    Outcome,
    Quota,
    Spool,
)


class FakeSpool:
    def __init__(self) -> None:
        self.data = bytearray()
        self.aborted = False

    @property
    def size(self) -> int:
        return len(self.data)

    async def write(self, data: bytes) -> None:
        assert not self.aborted
        self.data += data

    def write_nowait(self, data: bytes) -> bool:
        assert not self.aborted
        self.data += data
        return True

    async def abort(self) -> None:
        self.aborted = True
        self.data.clear()


class FakeStore:
    def __init__(self) -> None:
        self.domains: set[str] = set()
        self.accounts: dict[str, Account] = {}
        self.aliases: dict[str, tuple[str, ...]] = {}
        self.mailboxes: dict[int, MailboxInfo] = {}
        self.messages: dict[int, list[MessageInfo]] = {}
        self.blobs: dict[str, bytes] = {}
        self.quotas: dict[int, int] = {}  # account id -> limit (no quota check on deliver)
        self.serial = 0
        self.opened = 0
        self.closed = 0
        self._ids = itertools.count(1)
        self.audited: list[tuple[str, str, str]] = []  # (actor, action, detail)

    async def audit(self, actor: str, action: str, detail: str, now: float) -> None:
        self.audited.append((actor, action, detail))

    async def open(self) -> None:
        self.opened += 1

    async def close(self) -> None:
        self.closed += 1

    def _changed(self) -> None:
        self.serial += 1

    async def directory_serial(self) -> int:
        return self.serial

    async def directory(self) -> Directory:
        return Directory(self.serial, frozenset(self.domains),
                         {k: a.id for k, a in self.accounts.items()}, dict(self.aliases),
                         dict(self.quotas))

    async def add_domain(self, name: str) -> None:
        self.domains.add(name)
        self._changed()

    async def remove_domain(self, name: str) -> bool:
        if name not in self.domains:
            return False
        self.domains.discard(name)
        self._changed()
        return True

    async def list_domains(self) -> list[str]:
        return sorted(self.domains)

    async def add_account(self, address: str, password_hash: str) -> Account:
        if address in self.accounts:
            raise KeyError(address)
        account = Account(next(self._ids), address, password_hash)
        self.accounts[address] = account
        for name, special_use in DEFAULT_MAILBOXES:
            self.create_mailbox(account.id, name, special_use)
        self._changed()
        return account

    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> int:
        """Test helper: the Store interface has no way to create mailboxes yet."""
        mailbox_id = next(self._ids)
        self.mailboxes[mailbox_id] = MailboxInfo(mailbox_id, account_id, name, special_use,
                                                 1, 1, 0, True, 0)
        self.messages[mailbox_id] = []
        return mailbox_id

    async def set_password(self, address: str, password_hash: str) -> bool:
        account = self.accounts.get(address)
        if account is None:
            return False
        self.accounts[address] = replace(account, password_hash=password_hash)
        return True

    async def set_quota(self, address: str, limit: int | None) -> bool:
        account = self.accounts.get(address)
        if account is None:
            return False
        if limit is None:
            self.quotas.pop(account.id, None)
        else:
            self.quotas[account.id] = limit
        self._changed()
        return True

    async def get_quota(self, account_id: int) -> Quota | None:
        if all(a.id != account_id for a in self.accounts.values()):
            return None
        used = sum(message.size for mailbox_id, messages in self.messages.items()
                   if self.mailboxes[mailbox_id].account_id == account_id for message in messages)
        return Quota(used, self.quotas.get(account_id))

    async def remove_account(self, address: str) -> bool:
        account = self.accounts.pop(address, None)
        if account is None:
            return False
        for mailbox_id in [m.id for m in self.mailboxes.values() if m.account_id == account.id]:
            del self.mailboxes[mailbox_id]
            del self.messages[mailbox_id]
        self._changed()
        return True

    async def get_account(self, address: str) -> Account | None:
        return self.accounts.get(address)

    async def list_accounts(self) -> list[Account]:
        return list(self.accounts.values())

    async def set_alias(self, alias: str, targets: Sequence[str]) -> None:
        self.aliases[alias] = tuple(targets)
        self._changed()

    async def remove_alias(self, alias: str) -> bool:
        if self.aliases.pop(alias, None) is None:
            return False
        self._changed()
        return True

    async def list_aliases(self) -> dict[str, tuple[str, ...]]:
        return dict(sorted(self.aliases.items()))

    def new_spool(self) -> FakeSpool:
        return FakeSpool()

    async def deliver(self, spool: Spool, targets: Sequence[DeliveryTarget]) -> list[Outcome]:
        assert isinstance(spool, FakeSpool) and not spool.aborted
        data = bytes(spool.data)
        spool.aborted = True  # consumed
        blob_id = f"blob{next(self._ids)}"
        self.blobs[blob_id] = data
        outcomes = []
        for target in targets:
            mailbox = next((m for m in self.mailboxes.values()
                            if m.account_id == target.account_id and m.name == target.mailbox),
                           None)
            if mailbox is None:
                outcomes.append(Outcome.PERMANENT)
                continue
            uid = mailbox.uidnext
            self.mailboxes[mailbox.id] = replace(mailbox, uidnext=uid + 1,
                                                 message_count=mailbox.message_count + 1)
            self.messages[mailbox.id].append(MessageInfo(
                next(self._ids), mailbox.id, uid, frozenset(target.flags),
                time.time() if target.internal_date is None else target.internal_date,
                len(data), uid, blob_id))
            outcomes.append(Outcome.DELIVERED)
        return outcomes

    async def list_mailboxes(self, account_id: int) -> list[MailboxInfo]:
        return [m for m in self.mailboxes.values() if m.account_id == account_id]

    async def list_messages(self, mailbox_id: int) -> list[MessageInfo]:
        return list(self.messages.get(mailbox_id, []))

    async def read_message(self, message: MessageInfo) -> AsyncIterator[bytes]:
        data = self.blobs[message.blob_id]
        for start in range(0, len(data), 7):  # small chunks: CR/LF pairs get split
            yield data[start : start + 7]

    async def get_mailbox(self, account_id: int, name: str) -> MailboxInfo | None:
        return next((m for m in self.mailboxes.values()
                     if m.account_id == account_id and m.name == name), None)

    @property
    def wakeups(self) -> None:
        return None  # publishes nothing: the tests that need wake-ups use a real store

    async def structures(self, mailbox_id: int,
                         uids: Sequence[int]) -> dict[int, MessageStructure]:
        wanted = set(uids)
        return {m.uid: parse_message(self.blobs[m.blob_id])
                for m in self.messages.get(mailbox_id, []) if m.uid in wanted}

    async def read_range(self, message: MessageInfo, start: int, end: int) -> bytes:
        return self.blobs[message.blob_id][start:min(end, message.size)]

    # --- test helpers -------------------------------------------------------------------------
    def mailbox(self, address: str, name: str = "INBOX") -> MailboxInfo:
        account = self.accounts[address]
        return next(m for m in self.mailboxes.values()
                    if m.account_id == account.id and m.name == name)

    def stored(self, address: str, name: str = "INBOX") -> list[bytes]:
        mailbox = self.mailbox(address, name)
        return [self.blobs[m.blob_id] for m in self.messages[mailbox.id]]
