"""Policy for mail arriving on the MX port: whom we accept mail for, and storing it durably.

One `InboundSession` per SMTP connection answers the core's decisions. It never relays: a
recipient outside our domains is refused at RCPT (554 5.7.1), authenticated or not. A full
mailbox is refused at RCPT and after DATA as service/mailbox_quota.py says.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

from mailhouse import metrics
from mailhouse.errors import MailError, Reply, StorageFull
from mailhouse.model import Address, Envelope
from mailhouse.pipeline.modifiers import protocol_keyword, trace_headers
from mailhouse.pipeline.router import Resolution, Route, resolve_rcpt
from mailhouse.proto.smtp import events as ev
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.mailbox_quota import MAILBOX_FULL, grace_targets, has_limit, over_quota
from mailhouse.service.trace_recorder import (
    MAX_HEAD_SCAN,
    TraceRecorder,
    message_id_of,
    reply_text,
)
from mailhouse.store.base import Outcome, Spool, Store

log = logging.getLogger("mailhouse.smtp")

RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: User unknown")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
TEMPORARY = Reply(451, "4.3.0", "Temporary local problem, try again later")

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"
_counter = itertools.count()
_background: set[asyncio.Task[None]] = set()  # spool aborts nobody waits for


def new_queue_id() -> str:
    """Short, unique, sortable id for logs and the Received header (like Postfix's)."""
    n = (time.time_ns() // 1000) * 4096 + next(_counter) % 4096
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    hostname: str
    plus_separator: str = "+"


class InboundService:
    """Shared by every MX session: the store, the directory and the policy."""

    def __init__(self, store: Store, directory: DirectoryCache, policy: InboundPolicy,
                 trace: TraceRecorder | None = None) -> None:
        self.store = store
        self.directory = directory
        self.policy = policy
        self.trace = trace  # the message trace's steps (service/trace_recorder.py)

    def session(self, peer: str) -> InboundSession:
        return InboundSession(self, peer)


class InboundSession:
    def __init__(self, service: InboundService, peer: str) -> None:
        self._service = service
        self.peer = peer
        self.helo = ""
        self.esmtp = False
        self.tls: str | None = None
        self._mail: ev.MailFrom | None = None
        self._recipients: list[Address] = []
        self._accounts: list[int] = []
        self._spool: Spool | None = None
        self._failure: Reply | None = None  # a spool write failed: the reply for end of data
        self._pending = b""  # content the spool could not take without I/O
        self._queue_id = ""  # also the message trace's id: given at MAIL, so RCPT steps have it
        self._head = b""  # the message's start, until its header ends: for the Message-ID
        self._scanning = False  # still adding to _head
        self._trace_sender = ""
        self._via: dict[int, str] = {}  # account id -> the recipient that reached it
        self._message_id = ""

    # --- decisions -------------------------------------------------------------------------
    # MAIL, RCPT and the first bytes of DATA are answered synchronously (the directory is in
    # memory, small messages stay in the spool's buffer), so the transport needs no task for
    # them; only spilling a large message and the final commit await.
    def on_helo(self, event: ev.Helo) -> None:
        self.helo, self.esmtp = event.name, event.extended

    def mail_from(self, event: ev.MailFrom) -> Reply:
        self.reset()
        self._mail = event
        self._queue_id, self._message_id = new_queue_id(), ""
        self._trace_sender = str(event.sender) if event.sender else ""
        return SENDER_OK

    def rcpt_to(self, event: ev.RcptTo) -> Reply | None:
        """The decision from the in-memory directory, or None when it cannot be made there: the
        snapshot may predate a user the CLI added a moment ago, so a refusal is confirmed by
        `rcpt_recheck()` against the store (misses are bounded by the session error limit), and
        an account with a quota needs its usage read."""
        recipient, found = self._resolve(event)
        if found.route is Route.LOCAL and not has_limit(self._service.directory.current,
                                                        found.account_ids):
            self._add(recipient, found)
            return RECIPIENT_OK
        return None

    async def rcpt_recheck(self, event: ev.RcptTo) -> Reply:
        recipient, found = self._resolve(event)
        if found.route is not Route.LOCAL:
            await self._service.directory.refresh()
            recipient, found = self._resolve(event)
        if found.route is Route.NOT_OURS:
            log.info("event=smtp.rcpt_rejected peer=%s rcpt=<%s> reason=relay", self.peer,
                     recipient)
            self._step("refused", str(recipient), reply=RELAY_DENIED, reason="relay")
            return RELAY_DENIED
        if found.route is Route.UNKNOWN_USER:
            log.info("event=smtp.rcpt_rejected peer=%s rcpt=<%s> reason=unknown", self.peer,
                     recipient)
            self._step("refused", str(recipient), reply=UNKNOWN_USER, reason="unknown user")
            return UNKNOWN_USER
        declared = self._mail.size if self._mail is not None and self._mail.size else 0
        try:
            full = await over_quota(self._service.store, self._service.directory.current,
                                    found.account_ids, declared)
        except Exception:
            log.exception("event=smtp.quota_failed peer=%s rcpt=<%s>", self.peer, recipient)
            return TEMPORARY
        if full:
            log.info("event=smtp.rcpt_rejected peer=%s rcpt=<%s> reason=mailbox_full size=%d",
                     self.peer, recipient, declared)
            self._step("refused", str(recipient), reply=MAILBOX_FULL, reason="mailbox full")
            return MAILBOX_FULL
        self._add(recipient, found)
        return RECIPIENT_OK

    def _resolve(self, event: ev.RcptTo) -> tuple[Address, Resolution]:
        return resolve_rcpt(self._service.directory.current, event.recipient,
                            self._service.policy.plus_separator)

    def _add(self, recipient: Address, found: Resolution) -> None:
        self._recipients.append(recipient)
        for account in found.account_ids:
            if account not in self._accounts:
                self._accounts.append(account)
                self._via[account] = str(recipient)

    def data_start(self) -> bool:
        """Open the spool with the trace headers. True if `write()` must be awaited next."""
        assert self._mail is not None
        self._queue_id = self._queue_id or new_queue_id()
        self._head, self._scanning = b"", self._service.trace is not None
        self._failure = None
        self._spool = self._service.store.new_spool()
        self._pending = trace_headers(self.envelope(), hostname=self._service.policy.hostname,
                                      queue_id=self._queue_id)
        return self.data_chunk(b"")

    def data_chunk(self, data: bytes) -> bool:
        """Take content without I/O if the spool can; True if `write()` must be awaited."""
        if self._spool is None:
            return False
        if self._pending:
            data, self._pending = self._pending + data, b""
        if self._scanning:
            self._head += data[:MAX_HEAD_SCAN]
            self._scanning = b"\r\n\r\n" not in self._head and len(self._head) < MAX_HEAD_SCAN
        if self._spool.write_nowait(data):
            return False
        self._pending = data
        return True

    async def write(self) -> None:
        """Write what `data_chunk` could not take without I/O."""
        data, self._pending = self._pending, b""
        if self._spool is None or not data:
            return
        try:
            await self._spool.write(data)
        except MailError as exc:
            # Keep reading the client's data, then answer with this (452 when the disk is full).
            log.warning("event=smtp.spool_failed peer=%s id=%s reply=%r", self.peer,
                        self._queue_id, exc.reply.text)
            self._failure = exc.reply
            self.reset()

    async def data_complete(self, event: ev.DataComplete) -> Reply:
        started = time.perf_counter()
        await self.write()
        spool, self._spool = self._spool, None
        sender = self._mail_sender()
        if self._service.trace is not None:
            self._received(event.size)
        if spool is None:
            self._reset_envelope()
            return self._refused(self._failure or TEMPORARY)
        refusal = await self._quota_refusal(spool)
        if refusal is not None:
            self._reset_envelope()
            return self._refused(refusal, "mailbox full")
        targets = grace_targets(self._accounts)
        via = self._via
        try:
            outcomes = await self._service.store.deliver(spool, targets)
        except StorageFull as exc:
            log.warning("event=smtp.store_full peer=%s id=%s", self.peer, self._queue_id)
            return self._refused(exc.reply)
        except MailError as exc:
            log.warning("event=smtp.store_failed peer=%s id=%s reply=%r", self.peer,
                        self._queue_id, exc.reply.text)
            return self._refused(exc.reply)
        except Exception:
            log.exception("event=smtp.store_failed peer=%s id=%s", self.peer, self._queue_id)
            return self._refused(TEMPORARY)
        finally:
            self._reset_envelope()
        if self._service.trace is not None:
            for target, outcome in zip(targets, outcomes, strict=True):
                self._step("stored" if outcome is Outcome.DELIVERED else "not_stored",
                           via.get(target.account_id, ""), mailbox=target.mailbox,
                           account=target.account_id, outcome=outcome.name.lower())
        delivered = outcomes.count(Outcome.DELIVERED)
        log.info("event=smtp.delivered peer=%s id=%s from=<%s> rcpts=%d copies=%d size=%d",
                 self.peer, self._queue_id, sender, len(targets), delivered, event.size)
        if delivered:
            metrics.get().smtp_messages.labels("smtp").inc()
            metrics.get().accept_seconds.labels("smtp").observe(time.perf_counter() - started)
            return Reply(250, "2.0.0", f"Ok: queued as {self._queue_id}")
        if Outcome.TEMPORARY in outcomes:
            return TEMPORARY
        return Reply(550, "5.1.1", "Recipient no longer exists")

    async def _quota_refusal(self, spool: Spool) -> Reply | None:
        """452 4.2.2 when every target is over quota with this message (then the spool is
        dropped); None when it is to be delivered, to the few over quota with a grace."""
        try:
            over = await over_quota(self._service.store, self._service.directory.current,
                                    self._accounts, spool.size)
        except Exception:
            log.exception("event=smtp.quota_failed peer=%s id=%s", self.peer, self._queue_id)
            await spool.abort()
            return TEMPORARY
        if over and len(over) == len(self._accounts):
            log.info("event=smtp.mailbox_full peer=%s id=%s rcpts=%d size=%d", self.peer,
                     self._queue_id, len(self._recipients), spool.size)
            await spool.abort()
            return MAILBOX_FULL
        if over:
            log.info("event=smtp.quota_grace peer=%s id=%s accounts=%s size=%d", self.peer,
                     self._queue_id, ",".join(map(str, over)), spool.size)
        return None

    def reset(self) -> None:
        """Transaction over without a delivery: drop the spooled bytes."""
        spool, self._spool = self._spool, None
        self._pending = b""
        if spool is not None:
            task = asyncio.get_running_loop().create_task(spool.abort())
            _background.add(task)
            task.add_done_callback(_background.discard)
        self._reset_envelope()

    # --- the message trace -----------------------------------------------------------------
    def _step(self, kind: str, recipient: str = "", **detail: object) -> None:
        trace = self._service.trace
        if trace is not None and self._queue_id:
            if isinstance(reply := detail.get("reply"), Reply):
                detail["reply"] = reply_text(reply)
            trace.record(kind, self._queue_id, detail, sender=self._trace_sender,
                         recipient=recipient, message_id=self._message_id)

    def _received(self, size: int) -> None:
        """The reception step: where from, how, how big, for whom (one step per recipient,
        so a search by recipient finds it)."""
        self._message_id = message_id_of(self._head)
        self._head, self._scanning = b"", False
        for recipient in self._recipients:
            self._step("received", str(recipient), client=self.peer, helo=self.helo,
                       tls=self.tls or "", esmtp=self.esmtp, size=size, via="smtp")

    def _refused(self, reply: Reply, reason: str = "") -> Reply:
        """The end-of-data refusal, as a step."""
        self._step("rejected", reply=reply_text(reply), reason=reason)
        return reply

    # --- helpers ---------------------------------------------------------------------------
    def _reset_envelope(self) -> None:
        self._mail = None
        self._recipients, self._accounts = [], []
        self._via = {}

    def _mail_sender(self) -> str:
        return str(self._mail.sender) if self._mail and self._mail.sender else ""

    def envelope(self) -> Envelope:
        mail = self._mail
        assert mail is not None
        return Envelope(
            sender=mail.sender,
            recipients=tuple(self._recipients),
            helo=self.helo,
            peer=self.peer,
            smtputf8=mail.smtputf8,
            body_8bit=mail.body_8bit,
            tls=self.tls,
            protocol=protocol_keyword(esmtp=self.esmtp, tls=self.tls is not None,
                                      authenticated=False, smtputf8=mail.smtputf8),
        )
