"""Policy for authenticated submission (RFC 6409) on 587 (STARTTLS) and 465 (implicit TLS, RFC
8314): who may send, as whom, and handing the message to local mailboxes and the outbound queue.

One `SubmissionSession` per connection answers the SMTP core's decisions with the same method
names as service/inbound.py's session, so net/smtp.py drives either. The differences:
- nothing is accepted before a successful AUTH (the core answers 530 5.7.0; checked here too);
- the envelope sender and the header From must be the login's own address, an alias that
  reaches it, or a grant from `[submission] senders` (553 5.7.1 / 550 5.7.1), and the null
  sender is refused: bounces are the server's business, not a user's;
- any recipient is accepted: ours go straight to their mailboxes, others to the queue, in one
  `Store.deliver` transaction with one copy of the bytes; a full local mailbox is refused at
  RCPT and after DATA as service/mailbox_quota.py says;
- the message is completed as RFC 6409 §8 allows (Message-ID, Date), gets an authenticated
  Received header and is DKIM-signed before it is stored; no copy goes to Sent (the client's
  job, RFC 6409 leaves it there).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol

from mailhouse import metrics
from mailhouse.config import Config
from mailhouse.errors import ConfigError, MailError, Reply, StorageFull
from mailhouse.model import Account, Address, AddressError, Directory, normalize_domain
from mailhouse.pipeline.modifiers import protocol_keyword
from mailhouse.pipeline.router import (
    MAX_ALIAS_DEPTH,
    Resolution,
    Route,
    resolve_rcpt,
)
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import AUTH_FAILED, AUTH_REQUIRED
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.inbound import new_queue_id
from mailhouse.service.mailbox_quota import MAILBOX_FULL, grace_targets, has_limit, over_quota
from mailhouse.service.throttle import LoginGuard
from mailhouse.service.trace_recorder import (
    MAX_HEAD_SCAN,
    TraceRecorder,
    message_id_of,
    reply_text,
)
from mailhouse.store.base import DeliveryTarget, Outcome, QueueRequest, Store

log = logging.getLogger("mailhouse.submission")

# AUTH_FAILED (535 5.7.8) and AUTH_REQUIRED (530 5.7.0) are the core's own replies, so a refusal
# it makes (an authzid that is not the login) and one made here (a wrong password, an unknown
# user) are the same bytes on the wire.
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed logins, try again later")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")  # RFC 4954 §6
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user")
NULL_SENDER = Reply(553, "5.7.1", "Sender address rejected: null sender not allowed")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From header address rejected: not owned by user")
ONE_FROM = Reply(554, "5.6.0", "Message must have exactly one From header with one address")
BAD_HEADER = Reply(554, "5.6.0", "Malformed message header")
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: User unknown")
TEMPORARY = Reply(451, "4.3.0", "Temporary local problem, try again later")

# What may appear of a client-chosen HELO name inside our Received header (as modifiers.py).
_UNSAFE_HELO = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
# RFC 5322 §3.6.8 ftext: printable ASCII except ":"; obs-optional allows WSP before the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*\Z")


class Signer(Protocol):
    """message/dkim.py's DkimSigner: DKIM-Signature header lines (CRLF-terminated) for
    `message` signed for `domain`, or b"" when the domain has no key. CPU-bound."""

    def sign(self, message: bytes, domain: str) -> bytes: ...


def _no_op() -> None:
    return None


def normalize_grants(raw: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """`[submission] senders` as canonical keys: login Address.key → {address key, "@domain"}.
    Raises ConfigError naming the entry the operator must fix."""
    out: dict[str, frozenset[str]] = {}
    for login, grants in raw.items():
        where = f"submission.senders.{login}"
        try:
            login_key = Address.parse(login.strip()).key
        except AddressError as exc:
            raise ConfigError(f"{where}: the login must be an address ({exc})") from None
        keys: set[str] = set()
        for grant in grants:
            try:
                if grant.startswith("@"):
                    keys.add("@" + normalize_domain(grant[1:]))
                else:
                    keys.add(Address.parse(grant.strip()).key)
            except AddressError as exc:
                raise ConfigError(f"{where}: {grant!r} is neither an address nor \"@domain\" "
                                  f"({exc})") from None
        out[login_key] = frozenset(keys)
    return out


@dataclass(frozen=True, slots=True)
class SubmissionPolicy:
    hostname: str
    plus_separator: str = "+"
    senders: Mapping[str, frozenset[str]] = field(default_factory=dict)  # normalize_grants()

    @classmethod
    def from_config(cls, config: Config) -> SubmissionPolicy:
        return cls(config.hostname, config.smtp.plus_separator,
                   normalize_grants(config.submission.senders))


class SubmissionService:
    """Shared by every submission session (587 and 465)."""

    def __init__(self, store: Store, directory: DirectoryCache, guard: LoginGuard,
                 policy: SubmissionPolicy, *, signer: Signer | None = None,
                 on_queued: Callable[[], None] | None = None,
                 trace: TraceRecorder | None = None) -> None:
        self.store = store
        self.trace = trace  # the message trace's steps (service/trace_recorder.py)
        self.directory = directory
        self.guard = guard
        self.policy = policy
        self.signer = signer
        self.on_queued = on_queued or _no_op  # wakes the queue worker

    def session(self, peer: str) -> SubmissionSession:
        return SubmissionSession(self, peer)

    def may_send_as(self, account: Account, address: Address) -> bool:
        """The login's own address, an alias (not a catch-all) whose targets reach it, either
        with a +tag, or a configured grant. Read from the in-memory directory, no I/O."""
        key = address.key
        grants = self.policy.senders.get(account.address, frozenset())
        if key in grants or "@" + address.domain in grants:
            return True
        directory = self.directory.current
        candidates = [key]
        separator = self.policy.plus_separator
        local, _, domain = key.rpartition("@")
        if separator and separator in local:
            candidates.append(local.split(separator, 1)[0] + "@" + domain)
        return any(_reaches(directory, c, account.address, 0) for c in candidates)


def _reaches(directory: Directory, key: str, account: str, depth: int) -> bool:
    if key == account:
        return True
    if key.startswith("@") or depth >= MAX_ALIAS_DEPTH:
        return False
    return any(_reaches(directory, target, account, depth + 1)
               for target in directory.aliases.get(key, ()))


class SubmissionSession:
    def __init__(self, service: SubmissionService, peer: str) -> None:
        self._service = service
        self.peer = peer
        self.ip = peer.rsplit(":", 1)[0].strip("[]")
        self.helo = ""
        self.esmtp = False
        self.tls: str | None = None
        self.account: Account | None = None
        self._mail: ev.MailFrom | None = None
        self._recipients: list[Address] = []
        self._accounts: list[int] = []  # local mailboxes
        self._remote: list[str] = []  # forward-paths for the queue
        # Submission keeps the whole message in memory, up to max_message_size (the core stops
        # it there): its headers must be checked and the final bytes DKIM-signed before a
        # single byte is stored. Mail sent by our own users is smaller and rarer than MX
        # traffic; the MX path streams to the spool instead.
        self._data: bytearray | None = None
        self._queue_id = ""  # also the message trace's id: given at MAIL, so RCPT steps have it
        self._message_id = ""
        self._via: dict[int, str] = {}  # account id -> the recipient that reached it

    # --- decisions -------------------------------------------------------------------------
    def on_helo(self, event: ev.Helo) -> None:
        self.helo, self.esmtp = event.name, event.extended

    async def authenticate(self, event: ev.AuthCredentials) -> Reply:
        """235, or one 535 for an unknown user and a wrong password alike, or 454 while the
        throttle refuses (service/throttle.py decides; its delay is awaited here)."""
        try:
            outcome = await self._service.guard.login(self.ip, event.username, event.password)
        except Exception:
            log.exception("event=submission.auth_error peer=%s", self.peer)
            return AUTH_TEMPFAIL
        result = "ok" if outcome.account is not None else (
            "throttled" if outcome.throttled else "failed")
        metrics.get().logins.labels("submission", result).inc()
        if outcome.account is not None:
            self.account = outcome.account
            log.info("event=submission.login peer=%s user=%s mechanism=%s", self.peer,
                     outcome.account.address, event.mechanism)
            return AUTH_OK
        return AUTH_THROTTLED if outcome.throttled else AUTH_FAILED

    def mail_from(self, event: ev.MailFrom) -> Reply:
        self.reset()
        account = self.account
        if account is None:
            return AUTH_REQUIRED
        if event.sender is None:
            return NULL_SENDER
        if not self._service.may_send_as(account, event.sender):
            log.info("event=submission.sender_rejected peer=%s user=%s from=<%s>", self.peer,
                     account.address, event.sender)
            return SENDER_NOT_OWNED
        self._mail = event
        self._queue_id, self._message_id = new_queue_id(), ""
        return SENDER_OK

    def rcpt_to(self, event: ev.RcptTo) -> Reply | None:
        """As the MX session: from the in-memory directory, and None (recheck against the
        store) for an unknown local user or an account with a quota; other domains are
        accepted for the queue."""
        if self._mail is None:
            return None  # the recheck answers AUTH_REQUIRED
        recipient, found = self._resolve(event)
        if found.route is Route.NOT_OURS or (
                found.route is Route.LOCAL
                and not has_limit(self._service.directory.current, found.account_ids)):
            self._add(recipient, found)
            return RECIPIENT_OK
        return None

    async def rcpt_recheck(self, event: ev.RcptTo) -> Reply:
        if self._mail is None:
            return AUTH_REQUIRED
        recipient, found = self._resolve(event)
        if found.route is Route.UNKNOWN_USER:
            await self._service.directory.refresh()
            recipient, found = self._resolve(event)
        if found.route is Route.UNKNOWN_USER:
            log.info("event=submission.rcpt_rejected peer=%s rcpt=<%s> reason=unknown",
                     self.peer, recipient)
            return self._refused(UNKNOWN_USER, str(recipient), "unknown user")
        declared = self._mail.size or 0
        try:
            full = await over_quota(self._service.store, self._service.directory.current,
                                    found.account_ids, declared)
        except Exception:
            log.exception("event=submission.quota_failed peer=%s rcpt=<%s>", self.peer,
                          recipient)
            return TEMPORARY
        if full:
            log.info("event=submission.rcpt_rejected peer=%s rcpt=<%s> reason=mailbox_full "
                     "size=%d", self.peer, recipient, declared)
            return self._refused(MAILBOX_FULL, str(recipient), "mailbox full")
        self._add(recipient, found)
        return RECIPIENT_OK

    def _resolve(self, event: ev.RcptTo) -> tuple[Address, Resolution]:
        return resolve_rcpt(self._service.directory.current, event.recipient,
                            self._service.policy.plus_separator)

    def _add(self, recipient: Address, found: Resolution) -> None:
        self._recipients.append(recipient)
        if found.route is Route.NOT_OURS and str(recipient) not in self._remote:
            self._remote.append(str(recipient))
        for account in found.account_ids:
            if account not in self._accounts:
                self._accounts.append(account)
                self._via[account] = str(recipient)

    def data_start(self) -> bool:
        self._queue_id = self._queue_id or new_queue_id()
        self._data = bytearray()
        return False

    def data_chunk(self, data: bytes) -> bool:
        if self._data is not None:
            self._data += data
        return False  # never any I/O before the end of data

    async def write(self) -> None:
        return None

    async def data_complete(self, event: ev.DataComplete) -> Reply:
        data, self._data = self._data, None
        mail, account = self._mail, self.account
        started = time.perf_counter()
        try:
            if data is None or mail is None or account is None:
                return TEMPORARY
            reply = await self._submit(data, mail, account)
            if reply.code == 250:
                metrics.get().accept_seconds.labels("submission").observe(
                    time.perf_counter() - started)
            return reply
        finally:
            self._reset_envelope()

    def reset(self) -> None:
        self._data = None
        self._reset_envelope()

    # --- the message -----------------------------------------------------------------------
    async def _submit(self, data: bytearray, mail: ev.MailFrom, account: Account) -> Reply:
        """Check, complete, sign and store one message. At most two copies of it exist at
        once (the received buffer while the final bytes are assembled)."""
        service = self._service
        end = data.find(b"\r\n\r\n")
        try:
            fields = header_fields(bytes(data if end < 0 else data[: end + 4]))
        except HeaderError:
            return self._refused(BAD_HEADER, "", "header")
        author = _single_from(fields)
        if author is None:
            log.info("event=submission.from_rejected peer=%s user=%s reason=count", self.peer,
                     account.address)
            return self._refused(ONE_FROM, "", "From")
        if not service.may_send_as(account, author):
            log.info("event=submission.from_rejected peer=%s user=%s from=<%s>", self.peer,
                     account.address, author)
            return self._refused(FROM_NOT_OWNED, "", "From")
        names = {name for name, _ in fields}
        message = self._added_headers(mail, "message-id" not in names, "date" not in names)
        message += data
        data.clear()
        remote = tuple(self._remote)
        signature = b""
        # Only mail leaving us is signed: a signature proves nothing to our own mailboxes.
        if remote and service.signer is not None and (
                author.domain in service.directory.current.domains):
            signature = await self._sign(message, author.domain)
        size = len(signature) + len(message)
        try:
            over = await over_quota(service.store, service.directory.current, self._accounts,
                                    size)
        except Exception:
            log.exception("event=submission.quota_failed peer=%s id=%s", self.peer,
                          self._queue_id)
            return TEMPORARY
        if service.trace is not None:
            self._received(message, account, size, "signed" if signature else "not signed")
        if over and len(over) == len(self._accounts) and not remote:
            log.info("event=submission.mailbox_full peer=%s id=%s user=%s size=%d", self.peer,
                     self._queue_id, account.address, size)
            return self._refused(MAILBOX_FULL, "", "mailbox full")
        if over:
            log.info("event=submission.quota_grace peer=%s id=%s accounts=%s size=%d",
                     self.peer, self._queue_id, ",".join(map(str, over)), size)
        targets = grace_targets(self._accounts)
        spool = service.store.new_spool()
        try:
            if signature:
                await spool.write(signature)
            await spool.write(message)
            if remote:
                queue = QueueRequest(str(mail.sender), remote, smtputf8=mail.smtputf8,
                                     body_8bit=mail.body_8bit or not message.isascii(),
                                     trace=self._queue_id)
                outcomes = await service.store.deliver(spool, targets, queue=queue)
            else:
                outcomes = await service.store.deliver(spool, targets)
        except StorageFull as exc:
            log.warning("event=submission.store_full peer=%s id=%s", self.peer, self._queue_id)
            return self._refused(exc.reply, "", "storage")
        except MailError as exc:
            log.warning("event=submission.store_failed peer=%s id=%s reply=%r", self.peer,
                        self._queue_id, exc.reply.text)
            return self._refused(exc.reply, "", "storage")
        except Exception:
            log.exception("event=submission.store_failed peer=%s id=%s", self.peer,
                          self._queue_id)
            return self._refused(TEMPORARY, "", "storage")
        if service.trace is not None:
            self._stored(targets, outcomes, remote)
        delivered = outcomes.count(Outcome.DELIVERED)
        if delivered < len(targets):
            log.warning("event=submission.local_failed peer=%s id=%s failed=%d", self.peer,
                        self._queue_id, len(targets) - delivered)
        if not remote and not delivered:
            return TEMPORARY if Outcome.TEMPORARY in outcomes else Reply(
                550, "5.1.1", "Recipient no longer exists")
        if remote:
            try:
                service.on_queued()
            except Exception:  # the message is stored; the worker's next scan finds it
                log.exception("event=submission.wake_failed id=%s", self._queue_id)
        log.info("event=submission.accepted peer=%s id=%s user=%s from=<%s> local=%d remote=%d "
                 "size=%d", self.peer, self._queue_id, account.address, mail.sender, delivered,
                 len(remote), size)
        metrics.get().smtp_messages.labels("submission").inc()
        return Reply(250, "2.0.0", f"Ok: queued as {self._queue_id}")

    def _added_headers(self, mail: ev.MailFrom, message_id: bool, date: bool) -> bytes:
        """Received (RFC 5321 §4.4, `with ESMTPSA` per RFC 3848), then the Message-ID and Date
        RFC 6409 §8.3 lets a submission server add when the client left them out.

        The client's IP is kept in Received, as Postfix does: it is what an abuse desk needs
        to act on a compromised account. The login name is not written (it may differ from
        the From address, and would undo the privacy of sending through an alias)."""
        hostname = self._service.policy.hostname
        now = format_datetime(datetime.now(UTC))
        helo = _UNSAFE_HELO.sub("?", self.helo)[:255] or "unknown"
        ip = self.ip if ":" not in self.ip else "IPv6:" + self.ip  # RFC 5321 §4.1.3
        keyword = protocol_keyword(esmtp=True, tls=True, authenticated=True,
                                   smtputf8=mail.smtputf8)
        parts = [f"from {helo} ([{ip}])",
                 f"by {hostname} (mailhouse) with {keyword} id {self._queue_id}"]
        if self.tls:
            parts.append(f"({self.tls})")
        if len(self._recipients) == 1:
            parts.append(f"for <{self._recipients[0]}>")
        head = "Received: " + "\r\n\t".join(parts) + f";\r\n\t{now}\r\n"
        if message_id:
            head += f"Message-ID: <{self._queue_id}.{secrets.token_hex(8)}@{hostname}>\r\n"
        if date:
            head += f"Date: {now}\r\n"
        return head.encode("utf-8")

    async def _sign(self, message: bytes, domain: str) -> bytes:
        signer = self._service.signer
        assert signer is not None
        try:
            signature = await asyncio.to_thread(signer.sign, message, domain)
        except Exception:  # unsigned mail may still arrive; refusing it helps nobody
            log.exception("event=submission.dkim_failed id=%s domain=%s", self._queue_id, domain)
            return b""
        # Whatever the signer's line endings, what we store and send is CRLF only (checklist 28).
        return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    # --- the message trace -----------------------------------------------------------------
    def _step(self, kind: str, recipient: str, detail: dict[str, object]) -> None:
        trace = self._service.trace
        mail = self._mail
        if trace is not None and self._queue_id:
            sender = str(mail.sender) if mail is not None and mail.sender else ""
            trace.record(kind, self._queue_id, detail, sender=sender, recipient=recipient,
                         message_id=self._message_id)

    def _refused(self, reply: Reply, recipient: str, reason: str) -> Reply:
        """A recipient refused at RCPT, or (no recipient) the message at its end."""
        self._step("refused" if recipient else "rejected", recipient,
                   {"reply": reply_text(reply), "reason": reason})
        return reply

    def _received(self, message: bytes, account: Account, size: int, dkim: str) -> None:
        self._message_id = message_id_of(bytes(message[:MAX_HEAD_SCAN]))
        for recipient in self._recipients:
            self._step("received", str(recipient), {
                "client": self.peer, "helo": self.helo, "tls": self.tls or "",
                "user": account.address, "size": size, "via": "submission", "dkim": dkim})

    def _stored(self, targets: list[DeliveryTarget], outcomes: list[Outcome],
                remote: tuple[str, ...]) -> None:
        via = self._via
        for target, outcome in zip(targets, outcomes, strict=True):
            self._step("stored" if outcome is Outcome.DELIVERED else "not_stored",
                       via.get(target.account_id, ""),
                       {"mailbox": target.mailbox, "account": target.account_id,
                        "outcome": outcome.name.lower()})
        for address in remote:
            self._step("queued", address, {})

    def _reset_envelope(self) -> None:
        self._mail = None
        self._recipients, self._accounts, self._remote = [], [], []
        self._via = {}


# --- header inspection (the message itself is never re-serialized) ---------------------------

class HeaderError(ValueError):
    """The header section is not RFC 5322: refuse rather than guess how others will read it."""


def header_fields(message: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of every header field, in order (RFC 5322 §2.2).

    Stricter than the email package on purpose ("Composition Kills", USENIX Security 2020):
    a line that is neither a field nor a continuation is an error, not the start of the body,
    so no receiver can find a From header we did not see."""
    if message.startswith(b"\r\n"):
        return []
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise HeaderError("continuation line before the first field")
            name, value = fields[-1]
            fields[-1] = (name, value + line)  # unfolding removes only the CRLF (§2.2.3)
            continue
        raw_name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.match(raw_name):
            raise HeaderError("line without a field name")
        fields.append((raw_name.rstrip(b" \t").decode("ascii").lower(), value))
    return fields


def _single_from(fields: list[tuple[str, bytes]]) -> Address | None:
    """The one mailbox of the one From field, or None (zero or several fields or addresses,
    groups, unparseable)."""
    values = [value for name, value in fields if name == "from"]
    if len(values) != 1:
        return None
    try:
        text = values[0].decode("utf-8")  # RFC 6532 allows UTF-8 in header values
    except UnicodeDecodeError:
        return None
    return parse_mailbox(text)


def parse_mailbox(text: str) -> Address | None:
    """RFC 5322 §3.4 `mailbox` (name-addr / addr-spec), exactly one, strictly: comments are
    dropped, display names ignored, and anything that could be read as a second address (a
    comma, a group, an unquoted "@" or "<" in the display name) makes it None."""
    plain = _strip_comments(text)
    if plain is None:
        return None
    specials = _unquoted_positions(plain)
    if specials is None or any(c in specials for c in ",;:"):
        return None
    if "<" in specials or ">" in specials:
        if len(specials.get("<", [])) != 1 or len(specials.get(">", [])) != 1:
            return None
        lt, gt = specials["<"][0], specials[">"][0]
        if gt < lt or plain[gt + 1 :].strip() or any(at < lt for at in specials.get("@", [])):
            return None
        spec = plain[lt + 1 : gt].strip()
    else:
        spec = plain.strip()
        if any(c.isspace() for c in spec):
            return None
    try:
        return Address.parse(spec)
    except AddressError:
        return None


def _strip_comments(text: str) -> str | None:
    """Remove (nested) comments outside quoted strings; None if they do not balance."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
            if not depth:
                out.append(ch)
        elif ch == "\\" and (quoted or depth):
            escaped = True
            if not depth:
                out.append(ch)
        elif depth:
            depth += (ch == "(") - (ch == ")")
        elif quoted:
            quoted = ch != '"'
            out.append(ch)
        elif ch == '"':
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth = 1
            out.append(" ")
        elif ch == ")":
            return None
        else:
            out.append(ch)
    return None if (depth or quoted or escaped) else "".join(out)


def _unquoted_positions(text: str) -> dict[str, list[int]] | None:
    """Where the structural characters ,;:<>@ stand outside quoted strings."""
    found: dict[str, list[int]] = {}
    quoted, escaped = False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in ",;:<>@":
            found.setdefault(ch, []).append(i)
    return None if quoted else found
