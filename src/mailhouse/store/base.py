"""The one narrow storage interface every layer above talks to.

Implementations: memory.py (tests), sqlite.py + blobs.py (embedded default), PostgreSQL later.
Nothing outside store/ may know which one runs, so this file speaks only in model types and the
small dataclasses below. Every method is async: implementations keep blocking database and file
calls off the event loop thread (DESIGN.md, Store).

Durability contract: when `Spool.commit()`/`Store.deliver()` returns, the message bytes and their
metadata are on stable storage (fsynced). That is the moment SMTP may say 250 (RFC 5321 §6.1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mailhouse.message.searchfields import SearchFields
from mailhouse.message.structure import MessageStructure
from mailhouse.model import Account, Directory
from mailhouse.store.wakeup import Wakeups

MAX_UID = 0xFFFFFFFF  # nz-number, 32 bits (RFC 9051 §9, "uniqueid")

# Folders every account gets, with their RFC 6154 special-use attribute.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class MailboxError(Exception):
    """A mailbox operation that cannot be done as asked; nothing was changed. The IMAP layer
    answers NO with the response code each subclass names (RFC 5530)."""


class NoSuchMailbox(MailboxError):
    """No mailbox (or, for RENAME, no subtree) of that name: [NONEXISTENT]."""


class MailboxExists(MailboxError):
    """The name is taken, by a mailbox or by names below it: [ALREADYEXISTS]."""


class MailboxNotAllowed(MailboxError):
    """Deleting INBOX, renaming a mailbox into its own subtree: [CANNOT]."""


class QuotaExceeded(Exception):
    """The account's storage quota would be exceeded; nothing was stored. IMAP answers NO
    [OVERQUOTA] (RFC 9208 §4.3.1); a delivery target answers Outcome.TEMPORARY instead."""

    def __init__(self, used: int, limit: int, adding: int) -> None:
        super().__init__(f"quota exceeded: {used} + {adding} > {limit} octets")
        self.used, self.limit, self.adding = used, limit, adding


@dataclass(frozen=True, slots=True)
class Quota:
    """STORAGE usage and limit of one account in octets (RFC 9208 §5.1); limit None: none."""

    used: int
    limit: int | None


class Outcome(Enum):
    """Typed result of one recipient's delivery (as maddy's DeliveryTarget, Stalwart's Status)."""

    DELIVERED = "delivered"
    TEMPORARY = "temporary"  # try again later: 4xx
    PERMANENT = "permanent"  # never: 5xx


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    account_id: int
    mailbox: str = "INBOX"
    flags: tuple[str, ...] = ()  # IMAP system flags (\Seen …) and keywords
    internal_date: float | None = None  # seconds since the epoch; None means now
    # Deliver even if this takes the account over its quota: SMTP's grace of one message when
    # other recipients of the same transaction receive it (docs/decisions.md, quota in SMTP).
    ignore_quota: bool = False


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    subscribed: bool
    message_count: int
    # Kept current by every operation so STATUS never scans (RFC 9051 §6.3.11, RFC 8438 SIZE).
    unseen: int = 0  # messages without \Seen
    deleted: int = 0  # messages with \Deleted
    size: int = 0  # sum of the messages' sizes in octets


@dataclass(frozen=True, slots=True)
class MessageInfo:
    id: int
    mailbox_id: int
    uid: int
    flags: frozenset[str]
    internal_date: float
    size: int
    modseq: int
    blob_id: str
    internal_zone: int = 0  # INTERNALDATE's zone, minutes east of UTC (RFC 9051 §2.3.3)


class FlagOp(Enum):
    """STORE's three forms (RFC 9051 §6.4.6): FLAGS, +FLAGS, -FLAGS."""

    SET = "set"
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class MessageFlags:
    """What FETCH FLAGS / MODSEQ need of one message, without the rest of its row."""

    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """The result of one `store_flags` call. `modseq` is the MODSEQ every changed message got
    (the mailbox's new HIGHESTMODSEQ), 0 when nothing changed; `failed` are the UIDs whose MODSEQ
    was above UNCHANGEDSINCE, left alone (the MODIFIED response code, RFC 7162 §3.1.3)."""

    modseq: int
    changed: tuple[MessageFlags, ...]
    failed: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MailboxChanges:
    """What changed in a mailbox after a MODSEQ (CONDSTORE FETCH CHANGEDSINCE, QRESYNC SELECT,
    RFC 7162 §3.1.4.1, §3.2.5): messages whose MODSEQ is above it, with their flags, by UID, and
    the UIDs expunged after it (VANISHED (EARLIER)), ascending."""

    changed: tuple[MessageFlags, ...]
    expunged: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyResult:
    """COPYUID (RFC 4315 §3): the destination's UIDVALIDITY and (source UID, new UID) pairs in
    ascending source UID order; UIDs not in the source are not listed."""

    uidvalidity: int
    uids: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ExpungedMessage:
    """A message that left its mailbox, kept for QRESYNC: a client that last saw the mailbox at
    MODSEQ n learns the UIDs expunged since then (VANISHED (EARLIER), RFC 7162 §3.2.5.2,
    §3.2.10) without listing every UID it knows."""

    uid: int
    modseq: int


class RecipientStatus(Enum):
    PENDING = "pending"  # not delivered yet; tried again at next_attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # permanently; a DSN was (or will be) sent


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """Recipients of a message that go to other servers: stored in the outbound queue in the
    same transaction as the local copies (one blob shared by all)."""

    sender: str  # the envelope reverse-path without brackets; "" for <> (a bounce)
    recipients: tuple[str, ...]  # forward-paths as given (str(Address))
    smtputf8: bool = False
    body_8bit: bool = False
    not_before: float | None = None  # first attempt time (epoch seconds); None: now
    trace: str = ""  # the message trace's id (the reception's queue id), carried to each attempt


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    address: str
    status: RecipientStatus
    attempts: int
    next_attempt: float  # epoch seconds
    last_reply: str | None  # the last remote reply or local error, for `queue show` and DSNs


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    blob_id: str
    size: int
    sender: str  # "" for the null reverse-path
    created: float  # epoch seconds (arrival)
    smtputf8: bool
    body_8bit: bool
    delay_warned: bool  # a "delayed" DSN has been sent
    recipients: tuple[QueueRecipient, ...]
    trace: str = ""  # QueueRequest.trace; "" for a message queued before schema version 12
    # An operator asked to bounce it (`queue_bounce`): the worker's next round fails its
    # PENDING recipients and sends the DSN instead of trying them.
    bounce_requested: bool = False


@dataclass(frozen=True, slots=True)
class AdminAccount:
    """Someone who operates the server (the admin API, the web admin); not a mail account."""

    id: int
    name: str
    password_hash: str
    created: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change made by an operator: who (`cli:root`, `admin:alice`), what, to what."""

    id: int
    at: float
    actor: str
    action: str
    detail: str


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One step of a message's way through the server, for the message trace (issue 9 §2).

    `trace` ties a message's steps together: the id the reception gave it (the one in its
    Received header and in "250 Ok: queued as ..."), which the outbound queue carries to every
    attempt. `kind` is one of service/trace_events.py's names; `detail` a small JSON object.
    Addresses are stored lower-cased; `id` is 0 until stored (then it orders one trace's steps).
    """

    at: float
    trace: str
    kind: str
    sender: str = ""
    recipient: str = ""
    message_id: str = ""
    detail: str = "{}"
    queue_id: int = 0  # the outbound queue's numeric id (`mailhouse queue list`), 0 if none
    id: int = 0


@dataclass(frozen=True, slots=True)
class EventCount:
    """How many steps of one kind in one time bucket (Store.event_counts)."""

    start: float  # the bucket's start, epoch seconds
    kind: str
    count: int


@dataclass(frozen=True, slots=True)
class TraceSearch:
    """What `Store.search_events` matches: every field given must match exactly (AND)."""

    trace: str | None = None
    sender: str | None = None
    recipient: str | None = None
    message_id: str | None = None
    queue_id: int | None = None
    since: float | None = None  # at >= since
    until: float | None = None  # at < until


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An operator's token for the admin API; the secret itself is never stored, only its
    SHA-256 digest (the lookup key)."""

    id: int
    admin: str  # the operator's name; the token goes when the operator does
    label: str
    scopes: tuple[str, ...]
    created: float
    expires: float | None  # epoch seconds; None: until revoked
    last_used: float | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int  # with at least one PENDING recipient
    recipients: int  # PENDING
    oldest: float | None  # arrival (epoch seconds) of the oldest such message


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """The outcome of one delivery attempt for one recipient."""

    address: str
    status: RecipientStatus
    next_attempt: float  # ignored unless PENDING
    reply: str | None


class Spool(Protocol):
    """One incoming message's bytes on their way to disk. The transport streams DATA/BDAT into it
    as it arrives, so a 50 MB message never sits whole in memory."""

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes) -> None:
        """Append bytes. May raise StorageFull or MailError (temporary)."""

    def write_nowait(self, data: bytes) -> bool:
        """Append bytes if that needs no I/O (they fit the memory buffer); False otherwise, and
        nothing was appended: call `write()`. Lets the transport skip a task per chunk for the
        small messages that are most mail."""

    async def abort(self) -> None:
        """Throw the bytes away (transaction reset, connection lost, policy rejection)."""


class MaildropLock(Protocol):
    """A POP3 session's exclusive hold on an account's maildrop (`Store.lock_maildrop`)."""

    def release(self) -> None:
        """Give the maildrop back. Idempotent, synchronous and never raising, so it is safe on
        every path that ends a session: QUIT, a dropped connection, an error, a cancellation."""


class Store(Protocol):
    """Accounts, domains, aliases, mailboxes and messages."""

    async def open(self) -> None:
        """Create or migrate the schema and reap what a crash left half-written."""

    @property
    def wakeups(self) -> Wakeups | None:
        """Where committed changes to mailboxes are announced (store/wakeup.py): after each
        deliver, append, store_flags and expunge that changed something, copy/move (target;
        and source for move), create, rename and delete, once it is durable, with the
        mailbox's HIGHESTMODSEQ after the commit (0 for a deleted mailbox). Sessions
        `watch()` it for IDLE."""

    async def close(self) -> None: ...

    # --- directory: who we receive mail for -------------------------------------------------
    async def directory_serial(self) -> int:
        """Changes whenever domains, accounts or aliases change (from any process)."""

    async def directory(self) -> Directory: ...

    async def add_domain(self, name: str) -> None:
        """Idempotent. `name` is canonical (model.normalize_domain)."""

    async def remove_domain(self, name: str) -> bool: ...

    async def list_domains(self) -> list[str]: ...

    async def add_account(self, address: str, password_hash: str) -> Account:
        """Create the account and its DEFAULT_MAILBOXES. Raises KeyError if it exists."""

    async def set_password(self, address: str, password_hash: str) -> bool: ...

    async def set_quota(self, address: str, limit: int | None) -> bool:
        """The account's storage limit in octets (None: unlimited, the default); False if there is
        no such account. Lowering it below the usage refuses new mail, removes nothing. Changes
        the directory serial: `Directory.quotas` lists the limits."""

    async def get_quota(self, account_id: int) -> Quota | None:
        """Usage (the sum of its mailboxes' sizes, each kept on the mailbox row) and limit."""

    async def remove_account(self, address: str) -> bool:
        """Remove the account, its mailboxes and messages (blobs lose a reference)."""

    async def get_account(self, address: str) -> Account | None: ...

    async def list_accounts(self) -> list[Account]: ...

    async def set_alias(self, alias: str, targets: Sequence[str]) -> None:
        """`alias` is an address key or "@domain" (catch-all); targets are address keys."""

    async def remove_alias(self, alias: str) -> bool: ...

    async def list_aliases(self) -> dict[str, tuple[str, ...]]: ...

    # --- messages --------------------------------------------------------------------------
    def new_spool(self) -> Spool: ...

    async def deliver(self, spool: Spool, targets: Sequence[DeliveryTarget],
                      queue: QueueRequest | None = None) -> list[Outcome]:
        """Store one message (one copy of the bytes) into every target mailbox, and into the
        outbound queue when `queue` is given, durably, in one transaction shared with whatever
        else commits at the same moment (group commit). Returns one Outcome per target, in
        order (the queue entry is all-or-nothing: if it cannot be stored, this raises). A target
        whose account's quota the message would exceed is TEMPORARY (RFC 3463 4.2.2), unless
        it has `ignore_quota`. The
        spool is consumed. Raises StorageFull / MailError when nothing could be stored."""

    async def list_mailboxes(self, account_id: int) -> list[MailboxInfo]: ...

    # --- mailboxes (IMAP CREATE, DELETE, RENAME, SUBSCRIBE; docs/decisions.md) ---------------
    # Names are checked by rules.check_mailbox_name (ValueError); "/" is the hierarchy
    # delimiter. A name with mailboxes below it but no mailbox of its own is a \Noselect level
    # (RFC 9051 §7.3.1): nothing is stored for it, it exists while something below it does.
    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> MailboxInfo:
        """A new empty mailbox with a UIDVALIDITY never used before. Levels above it are not
        created (they are \\Noselect while it exists). Raises MailboxExists, KeyError for an
        unknown account, ValueError for a bad name or special-use attribute (RFC 6154)."""

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        """Remove the mailbox and its messages (each drops its blob reference) in one
        transaction. Mailboxes below it stay, so its name lives on as a \\Noselect level
        (RFC 9051 §6.3.5). Subscriptions are untouched. Raises NoSuchMailbox (also for a
        \\Noselect level) and MailboxNotAllowed for INBOX."""

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Rename `old` and every name below it at once; UIDVALIDITY, UIDs and MODSEQs stay.
        `old` may be a \\Noselect level. Renaming INBOX (RFC 9051 §6.3.6) creates `new` with a
        new UIDVALIDITY, moves INBOX's messages there (same UIDs, flags and MODSEQs) and leaves
        INBOX empty, as if they were expunged (one MODSEQ, in the expunge history); names below
        INBOX do not move. Raises NoSuchMailbox, MailboxExists (`new` or a name below it
        exists), MailboxNotAllowed (`new` inside `old`'s subtree)."""

    async def subscribe(self, account_id: int, name: str) -> None:
        """Idempotent. The name need not exist and outlives DELETE (RFC 9051 §6.3.7)."""

    async def unsubscribe(self, account_id: int, name: str) -> bool:
        """False if the name was not subscribed."""

    async def list_subscriptions(self, account_id: int) -> list[str]:
        """Subscribed names, sorted (existing or not: LSUB / LIST (SUBSCRIBED) decide)."""

    async def get_mailbox(self, account_id: int, name: str) -> MailboxInfo | None:
        """One mailbox by name (INBOX in any case, RFC 9051 §5.1); None if there is none."""

    async def status(self, mailbox_id: int) -> MailboxInfo | None:
        """One mailbox by id with its counters (STATUS, LIST-STATUS): one row, never a scan."""

    async def list_messages(self, mailbox_id: int) -> list[MessageInfo]:
        """The mailbox's messages in UID order (ascending); [] for an unknown mailbox."""

    # --- the POP3 maildrop lock -------------------------------------------------------------
    async def lock_maildrop(self, account_id: int) -> MaildropLock | None:
        """Take the account's maildrop lock without waiting; None when another session holds
        it, in this process or in any other on the same store.

        Why: RFC 1939 §8 has the server acquire "an exclusive-access lock on the maildrop"
        once a POP3 client is authenticated, so a second session is refused ([IN-USE], RFC
        2449 §8.1.1) instead of seeing message numbers another session is deleting. The lock
        lives in the store because only the store knows who else uses it: POP3 worker
        processes share one data directory (SQLite: a flock per account, store/
        maildrop_lock.py), and several hosts would share a PostgreSQL store (an advisory
        lock). A holder that dies, however it dies, loses the lock (the kernel drops the
        flock; PostgreSQL ends the session's advisory locks). IMAP sessions do not take it.

        Checked and reserved before the first await: of two logins racing in one process,
        one gets the lock. A call cancelled while it waits keeps nothing. Raises MailError
        when the lock could not be taken (the lock file cannot be made); nothing is held."""

    # --- ranged, field-limited reads: a FETCH never loads the whole mailbox -------------------
    async def list_messages_in(
        self, mailbox_id: int, first_uid: int, last_uid: int, limit: int | None = None
    ) -> list[MessageInfo]:
        """Messages with first_uid <= UID <= last_uid, ascending, at most `limit` of them (a
        range scan of the (mailbox_id, uid) index); [] for an unknown mailbox."""

    async def list_flags(
        self, mailbox_id: int, first_uid: int = 1, last_uid: int = MAX_UID
    ) -> list[MessageFlags]:
        """UID, flags and MODSEQ only (FETCH FLAGS, SELECT's bookkeeping), ascending."""

    async def list_uids(self, mailbox_id: int) -> list[int]:
        """Every UID, ascending: the session's sequence-number map (RFC 9051 §2.3.1.2)."""

    async def uid_bounds(self, mailbox_id: int) -> tuple[int, int] | None:
        """(lowest UID, highest UID), or None for an empty or unknown mailbox ("*")."""

    async def changes_since(self, mailbox_id: int, modseq: int) -> MailboxChanges:
        """Messages changed and UIDs expunged after `modseq`, from the (mailbox_id, modseq)
        indexes, never a scan of the mailbox."""

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        """Remove these messages from the mailbox; returns how many were removed (UIDs not in
        it, already expunged ones included, are ignored, so a repeated call is harmless).

        The whole call is one change (RFC 7162 §3.1): when anything is removed the mailbox's
        HIGHESTMODSEQ goes up by one, and each removed UID is kept with that MODSEQ in the
        expunge history (`list_expunged`) for QRESYNC. Each copy drops its reference on its
        blob; a blob left without references (no other copy, no queue entry) is deleted.
        Durable on return (group commit). POP3 deletions (RFC 1939 §6, UPDATE state) and IMAP
        EXPUNGE both come here, so each protocol sees the other's removals."""

    async def list_expunged(self, mailbox_id: int, since_modseq: int = 0) -> list[ExpungedMessage]:
        """Messages expunged from the mailbox with a MODSEQ above `since_modseq`, by UID."""

    # --- messages for IMAP (APPEND, STORE, COPY, MOVE) -------------------------------------
    async def append(
        self,
        mailbox_id: int,
        spool: Spool,
        flags: Sequence[str] = (),
        internal_date: float | None = None,
        internal_zone: int = 0,
    ) -> tuple[int, int]:
        """Store one message in the mailbox, durable on return as `deliver`; returns
        (UIDVALIDITY, UID) for APPENDUID (RFC 4315 §3). `internal_zone` is minutes east of UTC.
        The spool is consumed. Raises NoSuchMailbox (nothing stored), QuotaExceeded, ValueError
        for a bad flag, StorageFull / MailError."""

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        op: FlagOp,
        flags: Sequence[str],
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        """Set, add or remove flags on the messages with these UIDs (others are ignored), in one
        transaction. Every message whose flags change gets one new MODSEQ shared by the whole
        call (RFC 7162 §3.1); a message whose flags would not change keeps its MODSEQ. With
        `unchanged_since`, a message whose MODSEQ is above it is not touched and is listed in
        `failed` (RFC 7162 §3.1.3). Raises NoSuchMailbox, ValueError for a bad flag."""

    async def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> CopyResult:
        """Copy these messages (flags, INTERNALDATE, size; the blob is shared, never copied) to
        the end of `target_id`, a mailbox of the same account, in UID order, under one new MODSEQ
        of the target. Raises NoSuchMailbox, MailboxNotAllowed (another account's mailbox),
        QuotaExceeded (MOVE never does: it changes no account's usage)."""

    async def move_messages(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> CopyResult:
        """MOVE (RFC 6851): copy_messages and the expunge of the originals in one transaction;
        the source records them as expunged under one new MODSEQ (QRESYNC)."""

    def read_message(self, message: MessageInfo) -> AsyncIterator[bytes]:
        """The stored bytes, in chunks."""
        ...

    async def read_range(self, message: MessageInfo, start: int, end: int) -> bytes:
        """Octets [start, end) of the stored message, clamped to its size: BODY[part] and
        partial FETCHes read only what they send. KeyError when the blob is gone (expunged
        meanwhile)."""
        ...

    async def read_ranges(
        self, ranges: Sequence[tuple[MessageInfo, int, int]]
    ) -> list[bytes | None]:
        """`read_range` for many messages at once, in order; None for a message whose blob is
        gone. Lets a FETCH of many headers or small bodies read a batch in one go."""
        ...

    async def search_candidates(self, mailbox_id: int,
                                needles: Sequence[str]) -> set[int] | None:
        """The UIDs of a mailbox whose stored search fields may contain every one of
        `needles` (case-folded text of FROM/TO/CC/BCC/SUBJECT keys that must all match): a
        superset of the messages where one field holds each, so SEARCH decodes the fields of
        these only. None when the store cannot narrow (the caller then looks at them all)."""
        ...

    async def search_fields(self, mailbox_id: int,
                            uids: Sequence[int]) -> dict[int, SearchFields]:
        """The search and sort fields of each message by UID (`structures(...)[uid].search`,
        kept apart so SEARCH on addresses and subjects, SORT and THREAD read only them)."""
        ...

    async def structures(self, mailbox_id: int,
                         uids: Sequence[int]) -> dict[int, MessageStructure]:
        """The parsed structure (message/structure.py) of each message by UID; UIDs not in the
        mailbox are left out. Parsed once when the message was stored (deliver, append; copies
        share it with their blob) and kept beside it; a message stored before that, or under an
        older codec version, is parsed now and the result saved."""
        ...

    # --- the outbound queue (several nodes share it with a PostgreSQL store) ------------------
    def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        """The bytes of a queued message, in chunks (KeyError if unknown)."""
        ...

    async def queue_due(self, now: float, limit: int) -> list[QueuedMessage]:
        """Messages with a PENDING recipient whose next_attempt <= now, oldest first."""

    async def queue_claim(self, now: float, limit: int, lease: float) -> list[QueuedMessage]:
        """Take up to `limit` due messages (those `queue_due` would return, oldest first) in one
        write transaction, and move each claimed recipient (PENDING, next_attempt <= now) to
        next_attempt = now + lease, so no other claimer, in this process or another, on this
        node or another, takes it again before the lease ends. The claimer's `queue_update`
        then sets the real next state; if the claimer dies first, the recipient is simply due
        again at the lease's end (a delay, or a duplicate if the remote had the message; never
        a loss). Meanwhile `queue_next_attempt` and `queue_list` show the lease's end: the
        next attempt if this one never reports back.

        The messages come back as they stood before the claim, so a recipient with
        next_attempt <= now is one this call claimed. `queue_retry` (flush) ends a lease early:
        a message it makes due may be claimed again while its first claimer still delivers it,
        which the scheduler guards against within one process only."""

    async def queue_release(self, message_id: int, addresses: Sequence[str], at: float) -> None:
        """End a claim early without counting an attempt: each of these PENDING recipients
        whose next_attempt is later than `at` is due at `at` instead (as `queue_retry`, for
        some recipients). The scheduler calls it for the recipients a round claimed but never
        tried (a stop, a local failure); unknown or finished recipients are ignored."""

    async def queue_next_attempt(self) -> float | None:
        """The earliest next_attempt of any PENDING recipient; None for an empty queue. The
        scheduler sleeps until then (or until told of new mail)."""

    # --- operators (issue 9 §1) ---------------------------------------------------------------
    async def add_admin(self, name: str, password_hash: str, now: float) -> AdminAccount:
        """KeyError when `name` exists. Names: rules.check_admin_name."""
        ...

    async def get_admin(self, name: str) -> AdminAccount | None: ...

    async def list_admins(self) -> list[AdminAccount]: ...

    async def set_admin_password(self, name: str, password_hash: str) -> bool: ...

    async def remove_admin(self, name: str) -> bool: ...

    async def audit(self, actor: str, action: str, detail: str, now: float) -> None:
        """Append to the audit log; nothing ever edits or removes an entry."""
        ...

    async def list_audit(self, limit: int) -> list[AuditEntry]:
        """The newest `limit` entries, newest first."""
        ...

    # --- the message trace (issue 9 §2) -------------------------------------------------------
    async def record_events(self, events: Sequence[TraceEvent]) -> None:
        """Store a batch of steps in one write (group commit: it shares the batch transaction
        of whatever else commits then). Their `id` is ignored. Durable on return."""
        ...

    async def search_events(self, search: TraceSearch, limit: int) -> list[TraceEvent]:
        """Steps matching `search`, newest first (by id), at most `limit` (1 ..
        event_rules.MAX_EVENT_PAGE; ValueError beyond)."""
        ...

    async def trace_events(self, trace: str, limit: int) -> list[TraceEvent]:
        """One trace's steps in the order they were recorded, the first `limit`."""
        ...

    async def prune_events(self, before: float) -> int:
        """Forget the steps recorded at a time earlier than `before`; how many went."""
        ...

    async def event_counts(self, since: float, bucket: int) -> list[EventCount]:
        """Steps recorded at `since` or later, counted per kind and per `bucket` seconds
        (bucket starts are multiples of `bucket` since the epoch), oldest bucket first; for
        the dashboard's "deliveries and failures per hour". One range of the `at` index."""
        ...

    # --- API tokens (issue 9 §1; sqlite_tokens.py) -----------------------------------------
    async def add_api_token(self, admin: str, label: str, scopes: Sequence[str], digest: bytes,
                            now: float, expires: float | None) -> ApiToken:
        """KeyError when no operator is named `admin`; ValueError for a scope that is not
        one word (rules.check_scope) or a digest already stored."""
        ...

    async def api_token(self, digest: bytes) -> ApiToken | None:
        """The token whose secret hashes to `digest`, expired or not (the caller decides)."""
        ...

    async def list_api_tokens(self, admin: str | None = None) -> list[ApiToken]:
        """One operator's tokens, or everyone's; by id."""
        ...

    async def remove_api_token(self, token_id: int) -> ApiToken | None:
        """The token removed, None when there was none."""
        ...

    async def touch_api_token(self, token_id: int, now: float) -> None:
        """Record a use (callers write at most once a minute per token)."""
        ...

    async def queue_stats(self) -> QueueStats:
        """How much waits in the queue, from one aggregate (metrics, doctor): never a walk
        over the messages."""
        ...

    async def queue_get(self, message_id: int) -> QueuedMessage | None: ...

    async def queue_list(self) -> list[QueuedMessage]: ...

    async def queue_update(self, message_id: int, updates: Sequence[RecipientUpdate], *,
                           delay_warned: bool | None = None) -> None:
        """Record attempt outcomes (attempts += 1 for each updated recipient). When no
        recipient is PENDING any more the message leaves the queue and its blob loses a
        reference. Durable on return (group commit)."""

    async def queue_retry(self, message_id: int | None, now: float) -> int:
        """Make PENDING recipients due now (one message, or all with None: `queue flush`).
        Returns how many recipients were rescheduled."""

    async def queue_delete(self, message_id: int) -> bool:
        """Remove a message from the queue without delivering it (no DSN)."""

    async def queue_bounce(self, message_id: int, now: float) -> int:
        """Ask for the message to be bounced (`bounce_requested`, kept until it leaves the
        queue) and make its PENDING recipients due now, as `queue_retry` does, so the queue
        worker acts within a second. The worker, not this call, fails them and sends the DSN.
        Returns how many recipients are PENDING: 0 when the message is not queued."""
