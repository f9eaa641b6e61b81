"""The Store interface in memory, for fast tests of the layers above.

It keeps every rule a client can observe (UIDs, MODSEQs, UIDVALIDITY, refcounted blobs, outcomes,
directory serial) and nothing about durability: contents vanish with the object. Every method
finishes without awaiting anything in between, so under asyncio each is atomic, as a transaction
would be.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace

from mailhouse.message.searchfields import SearchFields
from mailhouse.message.structure import MessageStructure, parse_message
from mailhouse.message.structure_codec import literal_in_search_bytes, search_to_bytes
from mailhouse.model import Account, Directory
from mailhouse.store.base import (
    DEFAULT_MAILBOXES,
    MAX_UID,
    CopyResult,
    DeliveryTarget,
    ExpungedMessage,
    FlagOp,
    FlagUpdate,
    MailboxChanges,
    MailboxExists,
    MailboxInfo,
    MailboxNotAllowed,
    MaildropLock,
    MessageFlags,
    MessageInfo,
    NoSuchMailbox,
    Outcome,
    QueuedMessage,
    QueueRecipient,
    QueueRequest,
    Quota,
    QuotaExceeded,
    RecipientStatus,
    Spool,
)
from mailhouse.store.blobs import READ_CHUNK
from mailhouse.store.maildrop_lock import MaildropLocks
from mailhouse.store.memory_admin import MemoryAdmins
from mailhouse.store.memory_events import MemoryEvents
from mailhouse.store.memory_queue import MemoryQueue
from mailhouse.store.memory_tokens import MemoryTokens
from mailhouse.store.queue_rules import queue_recipients
from mailhouse.store.rules import (
    INBOX,
    apply_flag_op,
    canonical_mailbox_name,
    check_address_key,
    check_alias_key,
    check_flags,
    check_mailbox_name,
    check_quota,
    check_rename,
    check_special_use,
    check_zone,
    flag_counts,
    next_uidvalidity,
    subtree_bounds,
)
from mailhouse.store.wakeup import Wakeups


class MemorySpool:
    """Spool (base.py) that only buffers."""

    def __init__(self, owner: MemoryStore) -> None:
        self.owner = owner
        self._data = bytearray()
        self._size = 0
        self._state = "open"

    @property
    def size(self) -> int:
        """Bytes written so far, like FileSpool (unchanged by abort)."""
        return self._size

    async def write(self, data: bytes) -> None:
        self.write_nowait(data)

    def write_nowait(self, data: bytes) -> bool:
        self._check_open()
        self._data += data
        self._size += len(data)
        return True

    async def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._data = bytearray()

    def take(self) -> bytes:
        self._check_open()
        self._state = "sealed"
        data, self._data = bytes(self._data), bytearray()
        return data

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"spool is {self._state}")


@dataclass(slots=True)
class _Blob:
    data: bytes
    refcount: int
    structure: MessageStructure | None = None  # parsed when stored; None: a queue-only blob


@dataclass(slots=True)
class _Mailbox:
    info: MailboxInfo
    messages: dict[int, MessageInfo] = field(default_factory=dict)  # uid -> message, ascending
    expunged: dict[int, int] = field(default_factory=dict)  # uid -> modseq of its expunge


def _counted(info: MailboxInfo, messages: Iterable[MessageInfo], sign: int) -> MailboxInfo:
    """`info` with `messages` added (sign 1) to or taken (-1) from its STATUS counters."""
    count = unseen = deleted = size = 0
    for message in messages:
        is_unseen, is_deleted = flag_counts(message.flags)
        count, unseen, deleted = count + 1, unseen + is_unseen, deleted + is_deleted
        size += message.size
    return replace(
        info,
        message_count=info.message_count + sign * count,
        unseen=info.unseen + sign * unseen,
        deleted=info.deleted + sign * deleted,
        size=info.size + sign * size,
    )


class MemoryStore(MemoryQueue, MemoryAdmins, MemoryEvents, MemoryTokens):
    """Store (base.py) in memory. `open()` and `close()` only mark the lifecycle."""

    def __init__(self, wakeups: Wakeups | None = None) -> None:
        self._wakeups = wakeups
        self._init_admins()
        self._init_events()
        self._init_tokens()
        self._open = False
        self._serial = 0
        self._last_uidvalidity = 0
        self._domains: set[str] = set()
        self._accounts: dict[str, Account] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        self._mailboxes: dict[int, _Mailbox] = {}
        self._subscriptions: dict[int, set[str]] = {}  # account id -> names
        self._quotas: dict[int, int | None] = {}  # account id -> limit in octets
        self._blobs: dict[str, _Blob] = {}
        self._queue: dict[int, QueuedMessage] = {}  # by id, ascending (insertion order)
        self._ids = itertools.count(1)  # one sequence for every id: never reused
        self._maildrops = MaildropLocks()  # in this instance only: no other process sees it

    async def open(self) -> None:
        if self._open:
            raise RuntimeError("store is already open")
        self._open = True

    async def close(self) -> None:
        self._open = False
        self._maildrops.release_all()

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("store is not open")

    def _changed(self) -> None:
        self._serial += 1

    # --- directory ------------------------------------------------------------------------------
    async def directory_serial(self) -> int:
        self._check_open()
        return self._serial

    async def directory(self) -> Directory:
        self._check_open()
        return Directory(
            serial=self._serial,
            domains=frozenset(self._domains),
            users={a.address: a.id for a in self._accounts.values()},
            aliases=dict(sorted(self._aliases.items())),
            quotas={a: q for a, q in self._quotas.items() if q is not None},
        )

    async def add_domain(self, name: str) -> None:
        self._check_open()
        if name not in self._domains:
            self._domains.add(name)
            self._changed()

    async def remove_domain(self, name: str) -> bool:
        self._check_open()
        if name not in self._domains:
            return False
        self._domains.discard(name)
        self._changed()
        return True

    async def list_domains(self) -> list[str]:
        self._check_open()
        return sorted(self._domains)

    async def add_account(self, address: str, password_hash: str) -> Account:
        self._check_open()
        check_address_key(address)
        if address in self._accounts:
            raise KeyError(address)
        account = Account(next(self._ids), address, password_hash)
        self._accounts[address] = account
        self._subscriptions[account.id] = set()
        for name, special_use in DEFAULT_MAILBOXES:
            self._new_mailbox(account.id, name, special_use)
            self._subscriptions[account.id].add(name)
        self._changed()
        return account

    async def set_password(self, address: str, password_hash: str) -> bool:
        self._check_open()
        account = self._accounts.get(address)
        if account is None:
            return False
        self._accounts[address] = replace(account, password_hash=password_hash)
        self._changed()
        return True

    async def set_quota(self, address: str, limit: int | None) -> bool:
        self._check_open()
        account = self._accounts.get(address)
        if account is None:
            return False
        self._quotas[account.id] = check_quota(limit)
        self._changed()
        return True

    async def get_quota(self, account_id: int) -> Quota | None:
        self._check_open()
        if account_id not in self._subscriptions:  # every account has an entry there
            return None
        used = sum(m.info.size for m in self._mailboxes.values() if m.info.account_id == account_id)
        return Quota(used, self._quotas.get(account_id))

    def _quota_allows(self, account_id: int, adding: int) -> bool:
        used = sum(m.info.size for m in self._mailboxes.values() if m.info.account_id == account_id)
        limit = self._quotas.get(account_id)
        return limit is None or used + adding <= limit

    def _check_quota(self, account_id: int, adding: int) -> None:
        if not self._quota_allows(account_id, adding):
            used = sum(
                m.info.size for m in self._mailboxes.values() if m.info.account_id == account_id
            )
            raise QuotaExceeded(used, self._quotas.get(account_id) or 0, adding)

    async def remove_account(self, address: str) -> bool:
        self._check_open()
        account = self._accounts.pop(address, None)
        if account is None:
            return False
        for mailbox_id in [
            m.info.id for m in self._mailboxes.values() if m.info.account_id == account.id
        ]:
            for message in self._mailboxes.pop(mailbox_id).messages.values():
                self._release(message.blob_id)
        self._subscriptions.pop(account.id, None)
        self._changed()
        return True

    async def get_account(self, address: str) -> Account | None:
        self._check_open()
        return self._accounts.get(address)

    async def list_accounts(self) -> list[Account]:
        self._check_open()
        return [self._accounts[a] for a in sorted(self._accounts)]

    async def set_alias(self, alias: str, targets: Sequence[str]) -> None:
        self._check_open()
        check_alias_key(alias)
        if not targets:
            raise ValueError("an alias needs at least one target")
        for target in targets:
            check_address_key(target)
        self._aliases[alias] = tuple(targets)
        self._changed()

    async def remove_alias(self, alias: str) -> bool:
        self._check_open()
        if self._aliases.pop(alias, None) is None:
            return False
        self._changed()
        return True

    async def list_aliases(self) -> dict[str, tuple[str, ...]]:
        self._check_open()
        return dict(sorted(self._aliases.items()))

    # --- messages -------------------------------------------------------------------------------
    def new_spool(self) -> MemorySpool:
        self._check_open()
        return MemorySpool(self)

    async def deliver(
        self, spool: Spool, targets: Sequence[DeliveryTarget], queue: QueueRequest | None = None
    ) -> list[Outcome]:
        self._check_open()
        if not isinstance(spool, MemorySpool) or spool.owner is not self:
            raise TypeError("spool does not belong to this store")
        try:
            flags = [check_flags(t.flags) for t in targets]
            recipients = None if queue is None else queue_recipients(queue)
        except ValueError:
            await spool.abort()
            raise
        data = spool.take()
        blob_id = uuid.uuid4().hex
        now = time.time()
        outcomes: list[Outcome] = []
        for target, target_flags in zip(targets, flags, strict=True):
            mailbox = self._find_mailbox(target.account_id, target.mailbox)
            if mailbox is None:
                outcomes.append(Outcome.PERMANENT)
                continue
            if not target.ignore_quota and not self._quota_allows(target.account_id, len(data)):
                outcomes.append(Outcome.TEMPORARY)  # mailbox full, RFC 3463 4.2.2
                continue
            date = now if target.internal_date is None else target.internal_date
            self._add_messages(
                mailbox, [MessageInfo(0, 0, 0, target_flags, date, len(data), 0, blob_id)]
            )
            outcomes.append(Outcome.DELIVERED)
        references = outcomes.count(Outcome.DELIVERED)
        if queue is not None and recipients is not None:
            first = now if queue.not_before is None else queue.not_before
            queue_id = next(self._ids)
            self._queue[queue_id] = QueuedMessage(
                id=queue_id,
                blob_id=blob_id,
                size=len(data),
                sender=queue.sender,
                created=now,
                smtputf8=queue.smtputf8,
                body_8bit=queue.body_8bit,
                delay_warned=False,
                recipients=tuple(
                    QueueRecipient(a, RecipientStatus.PENDING, 0, first, None) for a in recipients
                ),
                trace=queue.trace,
            )
            references += 1
        if references:  # parsed once, as the SQLite store does, when a mailbox holds it
            parsed = parse_message(data) if Outcome.DELIVERED in outcomes else None
            self._blobs[blob_id] = _Blob(data, references, parsed)
        return outcomes

    def _find_mailbox(self, account_id: int, name: str) -> _Mailbox | None:
        name = canonical_mailbox_name(name)
        for mailbox in self._mailboxes.values():
            if mailbox.info.account_id == account_id and mailbox.info.name == name:
                return mailbox
        return None

    def _release(self, blob_id: str) -> None:
        blob = self._blobs[blob_id]
        blob.refcount -= 1
        if blob.refcount <= 0:
            del self._blobs[blob_id]

    def _view(self, info: MailboxInfo) -> MailboxInfo:
        subscribed = info.name in self._subscriptions.get(info.account_id, ())
        return replace(info, subscribed=subscribed)

    async def list_mailboxes(self, account_id: int) -> list[MailboxInfo]:
        self._check_open()
        return [
            self._view(m.info) for m in self._mailboxes.values() if m.info.account_id == account_id
        ]

    async def get_mailbox(self, account_id: int, name: str) -> MailboxInfo | None:
        self._check_open()
        mailbox = self._find_mailbox(account_id, name)
        return None if mailbox is None else self._view(mailbox.info)

    # --- mailboxes ------------------------------------------------------------------------------
    def _new_mailbox(self, account_id: int, name: str, special_use: str | None) -> _Mailbox:
        self._last_uidvalidity = next_uidvalidity(self._last_uidvalidity, time.time())
        mailbox_id = next(self._ids)
        info = MailboxInfo(
            id=mailbox_id,
            account_id=account_id,
            name=name,
            special_use=special_use,
            uidvalidity=self._last_uidvalidity,
            uidnext=1,
            highest_modseq=1,  # RFC 7162 §3.1.2.1: >= 1 from the start
            subscribed=False,
            message_count=0,
        )
        mailbox = self._mailboxes[mailbox_id] = _Mailbox(info)
        return mailbox

    def _subtree(self, account_id: int, name: str) -> list[_Mailbox]:
        """The mailbox called `name` (if any) and every mailbox below it."""
        low, high = subtree_bounds(name)
        return [
            m
            for m in self._mailboxes.values()
            if m.info.account_id == account_id and (m.info.name == name or low < m.info.name < high)
        ]

    def _check_account(self, account_id: int) -> None:
        if account_id not in self._subscriptions:
            raise KeyError(account_id)

    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> MailboxInfo:
        self._check_open()
        name = check_mailbox_name(name)
        special_use = check_special_use(special_use)
        self._check_account(account_id)
        if self._find_mailbox(account_id, name) is not None:
            raise MailboxExists(name)
        info = self._new_mailbox(account_id, name, special_use).info
        self._announce(info)
        return self._view(info)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        self._check_open()
        name = check_mailbox_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        mailbox = self._find_mailbox(account_id, name)
        if mailbox is None:
            raise NoSuchMailbox(name)
        del self._mailboxes[mailbox.info.id]
        for message in mailbox.messages.values():
            self._release(message.blob_id)
        self._announce(mailbox.info)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        self._check_open()
        old, new = check_mailbox_name(old), check_mailbox_name(new)
        moving = self._subtree(account_id, old)
        check_rename(old, new, bool(moving), bool(self._subtree(account_id, new)))
        if old == INBOX:
            self._rename_inbox(account_id, new)
            return
        for mailbox in moving:
            renamed = new + mailbox.info.name[len(old) :]
            mailbox.info = replace(mailbox.info, name=renamed)
        for mailbox in moving:
            if mailbox.info.name == new:  # as the SQLite store: the named mailbox, not below
                self._announce(mailbox.info)

    def _rename_inbox(self, account_id: int, new: str) -> None:
        inbox = self._find_mailbox(account_id, INBOX)
        assert inbox is not None
        target = self._new_mailbox(account_id, new, None)
        info = inbox.info
        target.info = replace(
            target.info,
            uidnext=info.uidnext,
            highest_modseq=info.highest_modseq,
            message_count=info.message_count,
            unseen=info.unseen,
            deleted=info.deleted,
            size=info.size,
        )
        moved, inbox.messages = inbox.messages, {}
        target.messages = {
            uid: replace(m, mailbox_id=target.info.id) for uid, m in moved.items()
        }
        if moved:
            modseq = info.highest_modseq + 1
            inbox.info = replace(
                info, highest_modseq=modseq, message_count=0, unseen=0, deleted=0, size=0
            )
            for uid in moved:
                inbox.expunged[uid] = modseq
            self._announce(inbox.info)
        self._announce(target.info)

    async def subscribe(self, account_id: int, name: str) -> None:
        self._check_open()
        name = check_mailbox_name(name)
        self._check_account(account_id)
        self._subscriptions[account_id].add(name)

    async def unsubscribe(self, account_id: int, name: str) -> bool:
        self._check_open()
        name = check_mailbox_name(name)
        names = self._subscriptions.get(account_id, set())
        if name not in names:
            return False
        names.discard(name)
        return True

    async def list_subscriptions(self, account_id: int) -> list[str]:
        self._check_open()
        return sorted(self._subscriptions.get(account_id, ()))

    async def status(self, mailbox_id: int) -> MailboxInfo | None:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        return None if mailbox is None else self._view(mailbox.info)

    async def lock_maildrop(self, account_id: int) -> MaildropLock | None:
        self._check_open()
        return await self._maildrops.lock(account_id)

    async def list_messages_in(
        self, mailbox_id: int, first_uid: int, last_uid: int, limit: int | None = None
    ) -> list[MessageInfo]:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            return []
        found = [m for uid, m in mailbox.messages.items() if first_uid <= uid <= last_uid]
        return found if limit is None else found[: max(limit, 0)]

    async def list_flags(
        self, mailbox_id: int, first_uid: int = 1, last_uid: int = MAX_UID
    ) -> list[MessageFlags]:
        found = await self.list_messages_in(mailbox_id, first_uid, last_uid)
        return [MessageFlags(m.uid, m.flags, m.modseq) for m in found]

    async def list_uids(self, mailbox_id: int) -> list[int]:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        return [] if mailbox is None else list(mailbox.messages)

    async def uid_bounds(self, mailbox_id: int) -> tuple[int, int] | None:
        uids = await self.list_uids(mailbox_id)
        return (uids[0], uids[-1]) if uids else None

    async def changes_since(self, mailbox_id: int, modseq: int) -> MailboxChanges:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            return MailboxChanges((), ())
        changed = tuple(
            MessageFlags(m.uid, m.flags, m.modseq)
            for m in mailbox.messages.values()
            if m.modseq > modseq
        )
        gone = tuple(sorted(uid for uid, seq in mailbox.expunged.items() if seq > modseq))
        return MailboxChanges(changed, gone)

    async def list_messages(self, mailbox_id: int) -> list[MessageInfo]:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        return [] if mailbox is None else list(mailbox.messages.values())

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        """See base.Store.expunge: one MODSEQ for the whole change (RFC 7162 §3.1)."""
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            return 0
        return self._expunge(mailbox, uids)

    def _expunge(self, mailbox: _Mailbox, uids: Sequence[int]) -> int:
        gone = [mailbox.messages.pop(uid) for uid in sorted(set(uids)) if uid in mailbox.messages]
        if not gone:
            return 0
        info = mailbox.info
        modseq = info.highest_modseq + 1
        mailbox.info = replace(_counted(info, gone, -1), highest_modseq=modseq)
        self._announce(mailbox.info)
        for message in gone:
            mailbox.expunged[message.uid] = modseq
            self._release(message.blob_id)
        return len(gone)

    # --- messages for IMAP ----------------------------------------------------------------------
    async def append(
        self,
        mailbox_id: int,
        spool: Spool,
        flags: Sequence[str] = (),
        internal_date: float | None = None,
        internal_zone: int = 0,
    ) -> tuple[int, int]:
        self._check_open()
        if not isinstance(spool, MemorySpool) or spool.owner is not self:
            raise TypeError("spool does not belong to this store")
        try:
            checked = check_flags(flags)
            check_zone(internal_zone)
        except ValueError:
            await spool.abort()
            raise
        data = spool.take()
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            raise NoSuchMailbox(mailbox_id)
        self._check_quota(mailbox.info.account_id, len(data))
        blob_id = uuid.uuid4().hex
        self._blobs[blob_id] = _Blob(data, 1, parse_message(data))
        [uid] = self._add_messages(mailbox, [
            MessageInfo(
                id=0,
                mailbox_id=mailbox_id,
                uid=0,
                flags=checked,
                internal_date=time.time() if internal_date is None else internal_date,
                size=len(data),
                modseq=0,
                blob_id=blob_id,
                internal_zone=internal_zone,
            )
        ])
        return mailbox.info.uidvalidity, uid

    def _add_messages(self, mailbox: _Mailbox, messages: list[MessageInfo]) -> list[int]:
        """Append copies of `messages` under new UIDs and one new MODSEQ; returns the UIDs."""
        info = mailbox.info
        modseq = info.highest_modseq + 1
        uids = list(range(info.uidnext, info.uidnext + len(messages)))
        for uid, message in zip(uids, messages, strict=True):
            mailbox.messages[uid] = replace(
                message, id=next(self._ids), mailbox_id=info.id, uid=uid, modseq=modseq
            )
        mailbox.info = replace(
            _counted(info, messages, 1), uidnext=info.uidnext + len(messages), highest_modseq=modseq
        )
        self._announce(mailbox.info)
        return uids

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        op: FlagOp,
        flags: Sequence[str],
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        self._check_open()
        checked = check_flags(flags)
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            raise NoSuchMailbox(mailbox_id)
        failed: list[int] = []
        changes: list[tuple[int, frozenset[str]]] = []
        for uid in sorted(set(uids)):
            message = mailbox.messages.get(uid)
            if message is None:
                continue
            if unchanged_since is not None and message.modseq > unchanged_since:
                failed.append(uid)
                continue
            new = apply_flag_op(message.flags, op, checked)
            if new != message.flags:
                changes.append((uid, new))
        if not changes:
            return FlagUpdate(0, (), tuple(failed))
        modseq = mailbox.info.highest_modseq + 1
        info = _counted(mailbox.info, [mailbox.messages[uid] for uid, _ in changes], -1)
        for uid, new in changes:
            mailbox.messages[uid] = replace(mailbox.messages[uid], flags=new, modseq=modseq)
        info = _counted(info, [mailbox.messages[uid] for uid, _ in changes], 1)
        mailbox.info = replace(info, highest_modseq=modseq)
        self._announce(mailbox.info)
        changed = tuple(MessageFlags(uid, new, modseq) for uid, new in changes)
        return FlagUpdate(modseq, changed, tuple(failed))

    def _pair(self, source_id: int, target_id: int) -> tuple[_Mailbox, _Mailbox]:
        source, target = self._mailboxes.get(source_id), self._mailboxes.get(target_id)
        if source is None or target is None:
            raise NoSuchMailbox(source_id if source is None else target_id)
        if source.info.account_id != target.info.account_id:
            raise MailboxNotAllowed("messages move only between mailboxes of one account")
        return source, target

    async def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> CopyResult:
        self._check_open()
        source, target = self._pair(source_id, target_id)
        adding = sum(source.messages[u].size for u in set(uids) if u in source.messages)
        self._check_quota(target.info.account_id, adding)
        return self._copy(source, uids, target)

    def _copy(self, source: _Mailbox, uids: Sequence[int], target: _Mailbox) -> CopyResult:
        originals = [source.messages[u] for u in sorted(set(uids)) if u in source.messages]
        if not originals:
            return CopyResult(target.info.uidvalidity, ())
        new = self._add_messages(target, originals)
        for message in originals:
            self._blobs[message.blob_id].refcount += 1
        pairs = tuple((m.uid, uid) for m, uid in zip(originals, new, strict=True))
        return CopyResult(target.info.uidvalidity, pairs)

    async def move_messages(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> CopyResult:
        self._check_open()
        source, target = self._pair(source_id, target_id)
        result = self._copy(source, uids, target)
        if result.uids:
            self._expunge(source, [old for old, _ in result.uids])
        return result

    async def list_expunged(self, mailbox_id: int, since_modseq: int = 0) -> list[ExpungedMessage]:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            return []
        return [
            ExpungedMessage(uid, modseq)
            for uid, modseq in sorted(mailbox.expunged.items())
            if modseq > since_modseq
        ]

    @property
    def wakeups(self) -> Wakeups | None:
        return self._wakeups

    def _announce(self, info: MailboxInfo) -> None:
        if self._wakeups is not None:
            self._wakeups.publish(info.account_id, info.id, info.highest_modseq)

    async def structures(self, mailbox_id: int,
                         uids: Sequence[int]) -> dict[int, MessageStructure]:
        self._check_open()
        mailbox = self._mailboxes.get(mailbox_id)
        if mailbox is None:
            return {}
        wanted = set(uids)
        out: dict[int, MessageStructure] = {}
        for message in mailbox.messages.values():
            if message.uid in wanted:
                blob = self._blobs.get(message.blob_id)
                if blob is None:
                    continue
                if blob.structure is None:
                    blob.structure = parse_message(blob.data)
                out[message.uid] = blob.structure
        return out

    async def search_candidates(self, mailbox_id: int,
                                needles: Sequence[str]) -> set[int] | None:
        literal = [b for b in map(literal_in_search_bytes, needles) if b]
        if not literal:
            return None
        box = self._mailboxes.get(mailbox_id)
        uids = [m.uid for m in box.messages.values()] if box is not None else []
        found = await self.search_fields(mailbox_id, uids)
        return {uid for uid, fields in found.items()
                if all(b in search_to_bytes(fields) for b in literal)}

    async def search_fields(self, mailbox_id: int,
                            uids: Sequence[int]) -> dict[int, SearchFields]:
        return {uid: s.search for uid, s in (await self.structures(mailbox_id, uids)).items()}

    async def read_range(self, message: MessageInfo, start: int, end: int) -> bytes:
        self._check_open()
        blob = self._blobs.get(message.blob_id)
        if blob is None:
            raise KeyError(message.blob_id)
        return blob.data[start:min(end, message.size)]

    async def read_ranges(
        self, ranges: Sequence[tuple[MessageInfo, int, int]]
    ) -> list[bytes | None]:
        self._check_open()
        out: list[bytes | None] = []
        for message, start, end in ranges:
            blob = self._blobs.get(message.blob_id)
            out.append(None if blob is None else blob.data[start:min(end, message.size)])
        return out

    async def read_message(self, message: MessageInfo) -> AsyncIterator[bytes]:
        """Raises KeyError if the blob does not exist, as the embedded store does."""
        async for chunk in self.read_blob(message.blob_id):
            yield chunk

    # --- the outbound queue -----------------------------------------------------------------
    async def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        self._check_open()
        blob = self._blobs.get(blob_id)
        if blob is None:
            raise KeyError(blob_id)
        data = blob.data
        for start in range(0, len(data), READ_CHUNK):
            yield data[start : start + READ_CHUNK]
