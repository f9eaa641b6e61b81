"""The POP3 maildrop (RFC 1939): who may open it, what one session sees, what QUIT removes.

The protocol core (proto/pop3) speaks the commands; this service decides what they act on:

- **Login** goes through `LoginGuard`, the one path every protocol shares, so POP3 guesses are
  throttled and answered with the same constant delay as submission's (security.md §3).
- **The maildrop is the account's INBOX** (as Dovecot's POP3). The session's view is a snapshot
  taken at login, in UID order: messages are numbered 1..n once (RFC 1939 §5, "message-number
  ... shall not change during the session") and mail arriving later waits for the next session.
- **Exclusive access** (RFC 1939 §8: the server "acquires an exclusive-access lock on the
  maildrop" once the client is authenticated). A second POP3 session for the same account is
  refused with [IN-USE] (RFC 2449 §8.1.1), which is said only after the credentials were right,
  so it leaks nothing to a guesser. IMAP sessions are not locked out: they share the mailbox.
  The lock is the store's (`Store.lock_maildrop`): it holds across the POP3 worker processes of
  one server (`[pop3] workers`), would hold across hosts with a shared store (a PostgreSQL
  advisory lock), and dies with its holder however it dies.
- **UIDL** (RFC 1939 §7) is Dovecot's default `pop3_uidl_format = %08Xu%08Xv`: the IMAP UID,
  then the mailbox's UIDVALIDITY, 8 upper-case hex digits each. Both numbers are fixed for the
  life of the message and never reused (RFC 9051 §2.3.1.1), so a UIDL is stable across sessions,
  restarts and reopening the store, names the same message IMAP sees, and matches what Dovecot
  said for a mailbox migrated with its UIDs and UIDVALIDITY: clients that keep "already
  downloaded" lists by UIDL (fetchmail, getmail, phones) do not fetch everything again.
- **Sizes** are `MessageInfo.size`, the stored octets. Stored mail is CRLF already (inbound SMTP
  refuses bare LF, import converts LF to CRLF), so RETR sends exactly `size` octets before
  byte-stuffing and LIST/STAT agree with it (RFC 1939 §5, §11 "exact size").
- **Deletion** happens only in the UPDATE state, after QUIT (RFC 1939 §6): `commit()` is an
  ordinary `Store.expunge`, with its MODSEQ and expunge history, so IMAP sessions see POP3
  deletions like any other. A dropped connection never commits: nothing is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Final

from mailhouse.errors import MailError
from mailhouse.model import Account
from mailhouse.proto.pop3.events import LoginResult, MaildropEntry
from mailhouse.service.throttle import LoginGuard
from mailhouse.store.base import MailboxInfo, MaildropLock, MessageInfo, Store

log = logging.getLogger("mailhouse.pop3")

MAILDROP: Final = "INBOX"  # the mailbox POP3 serves, as Dovecot's POP3


def uidl(uid: int, uidvalidity: int) -> str:
    """The unique-id of a message (RFC 1939 §7: 1 to 70 characters 0x21-0x7E): 16 hex digits,
    UID then UIDVALIDITY, as Dovecot's default `%08Xu%08Xv`."""
    return f"{uid:08X}{uidvalidity:08X}"


class MessageGone(MailError):
    """The message left the store after the session's snapshot was taken (an IMAP client
    expunged it): RETR/TOP answer -ERR and the session goes on. Raised at the first chunk, so
    the transport can still answer -ERR instead of +OK."""


class Pop3Service:
    """One per server: logs users in and hands each session its `Maildrop`."""

    def __init__(self, store: Store, guard: LoginGuard) -> None:
        self._store = store
        self._guard = guard
        # account id -> the maildrop lock a session of this service holds (RFC 1939 §8).
        self._held: dict[int, MaildropLock] = {}

    def is_locked(self, account_id: int) -> bool:
        """Whether a session of this service holds the account's maildrop."""
        return account_id in self._held

    async def login(
        self, ip: str, username: str, password: str
    ) -> tuple[LoginResult, Maildrop | None]:
        """Check the credentials, take the maildrop lock, snapshot the INBOX.

        OK comes with a Maildrop whose lock the caller must `release()` (also when the
        connection drops). FAILED and THROTTLED come after the guard's constant delay; IN_USE
        only for right credentials; SYS_TEMP when the store could not answer or take the lock
        ([SYS/TEMP], RFC 3206 §4: the client should try again later); SYS_PERM for an account
        without an INBOX."""
        try:
            outcome = await self._guard.login(ip, username, password)
        except MailError:
            log.warning("event=pop3.login_store_failed ip=%s", ip, exc_info=True)
            return LoginResult.SYS_TEMP, None
        if outcome.throttled:
            return LoginResult.THROTTLED, None
        account = outcome.account
        if account is None:
            return LoginResult.FAILED, None
        try:
            lock = await self._store.lock_maildrop(account.id)  # keeps nothing if cancelled
        except MailError:
            log.warning("event=pop3.lock_failed account=%s", account.address, exc_info=True)
            return LoginResult.SYS_TEMP, None
        if lock is None:
            return LoginResult.IN_USE, None
        self._held[account.id] = lock
        try:
            maildrop = await self._open(account, lock)
        except MailError:
            self._unlock(account.id, lock)
            log.warning("event=pop3.maildrop_failed account=%s", account.address, exc_info=True)
            return LoginResult.SYS_TEMP, None
        except BaseException:  # cancelled (the client left) or a bug: never keep the lock
            self._unlock(account.id, lock)
            raise
        if maildrop is None:
            self._unlock(account.id, lock)
            # Every account gets an INBOX (store.base.DEFAULT_MAILBOXES); only a damaged store,
            # or the account's removal racing this login, gets here. Retrying will not help:
            # [SYS/PERM] (RFC 3206 §4).
            log.error("event=pop3.no_inbox account=%s", account.address)
            return LoginResult.SYS_PERM, None
        return LoginResult.OK, maildrop

    async def _open(self, account: Account, lock: MaildropLock) -> Maildrop | None:
        inbox = await self._store.get_mailbox(account.id, MAILDROP)
        if inbox is None:
            return None
        messages = await self._store.list_messages(inbox.id)
        return Maildrop(self._store, account, inbox, messages,
                        unlock=lambda: self._unlock(account.id, lock))

    def _unlock(self, account_id: int, lock: MaildropLock) -> None:
        if self._held.get(account_id) is lock:
            del self._held[account_id]
        lock.release()


class Maildrop:
    """One POP3 session's view of the user's INBOX (RFC 1939 §3, §8): the messages present at
    login, in UID order, numbered from 0 here (the core shows 1..n)."""

    def __init__(
        self,
        store: Store,
        account: Account,
        mailbox: MailboxInfo,
        messages: Sequence[MessageInfo],
        *,
        unlock: Callable[[], None],
    ) -> None:
        self.account = account
        self.mailbox = mailbox
        self._store = store
        self._messages = sorted(messages, key=lambda m: m.uid)
        self._unlock = unlock
        self.entries: list[MaildropEntry] = [
            MaildropEntry(size=m.size, uidl=uidl(m.uid, mailbox.uidvalidity))
            for m in self._messages
        ]
        self._committed = False
        self._committing = False
        self._released = False  # release() was called
        self._unlocked = False

    @property
    def released(self) -> bool:
        return self._released

    def read(self, index: int) -> AsyncGenerator[bytes, None]:
        """The stored bytes of entry `index` (0-based), in chunks: exactly `entries[index].size`
        octets, CRLF line ends, not byte-stuffed (the core stuffs, RFC 1939 §3). Raises
        IndexError now for an index outside the snapshot; while iterating, MessageGone (before
        the first chunk) if an IMAP session expunged the message meanwhile, or MailError.
        `aclose()` it when stopping early (TOP): that closes the file at once."""
        self._check_usable()
        return self._chunks(self._messages[self._index(index)])

    async def _chunks(self, message: MessageInfo) -> AsyncGenerator[bytes, None]:
        chunks = self._store.read_message(message)
        sent = 0
        try:
            try:
                async for chunk in chunks:
                    sent += len(chunk)
                    yield chunk
            except KeyError as exc:  # the blob is gone with its last copy
                raise MessageGone() from exc
            except OSError as exc:
                raise MailError() from exc
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()
        if sent != message.size:  # LIST said otherwise: the client may be confused; say so
            log.error("event=pop3.size_mismatch account=%s uid=%d listed=%d sent=%d",
                      self.account.address, message.uid, message.size, sent)

    async def commit(self, deleted: Sequence[int]) -> None:
        """The UPDATE state (RFC 1939 §6): expunge the messages marked deleted (0-based
        indexes). Messages an IMAP session expunged meanwhile count as removed. Raises MailError
        when the store failed (the core answers -ERR, RFC 1939 §6: "some deleted messages not
        removed"); nothing is removed then. The lock is held until the removal is durable,
        even if the connection drops and `release()` comes first, so the next session's
        snapshot never lists a message this one is removing."""
        self._check_usable()
        if self._committed:
            raise RuntimeError("this maildrop was committed already")
        uids = [self._messages[self._index(i)].uid for i in deleted]
        self._committed = True
        if not uids:
            return
        self._committing = True
        removed = await asyncio.shield(self._expunge(uids))
        if removed < len(set(uids)):
            log.info("event=pop3.already_expunged account=%s count=%d", self.account.address,
                     len(set(uids)) - removed)

    async def _expunge(self, uids: list[int]) -> int:
        try:
            return await self._store.expunge(self.mailbox.id, uids)
        finally:
            self._committing = False
            if self._released:
                self._do_unlock()

    def release(self) -> None:
        """End the session's exclusive access (RFC 1939 §8). Idempotent; the transport calls it
        whenever the session ends, QUIT or not."""
        self._released = True
        if not self._committing:
            self._do_unlock()

    def _do_unlock(self) -> None:
        if not self._unlocked:
            self._unlocked = True
            self._unlock()

    def _index(self, index: int) -> int:
        if not 0 <= index < len(self._messages):
            raise IndexError(f"no message {index} in a maildrop of {len(self._messages)}")
        return index

    def _check_usable(self) -> None:
        if self._released:
            raise RuntimeError("this maildrop was released")
