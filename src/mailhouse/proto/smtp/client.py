"""The SMTP client core: server replies in, commands and message bytes out (RFC 5321 §3-4,
RFC 1870 SIZE, 2920 PIPELINING, 3207 STARTTLS, 6152 8BITMIME, 6531 SMTPUTF8). No sockets, no
clock: the transport feeds `receive_data()`, pulls `next_event()`, writes `data_to_send()`, and
reports timeouts and lost connections with `timeout()` / `connection_lost()`.

One core is one connection. It waits for the greeting, says EHLO (HELO when EHLO is refused,
RFC 5321 §3.2), upgrades with STARTTLS when offered and wanted, then runs any number of
transactions. Every transaction ends in exactly one `TransactionDone` that carries a reply for
every recipient, in order: the remote's own reply, or a local one saying why (timeout, lost
connection, a capability the message needs and the remote lacks). Whether a reply means
delivered, retry or bounce is its code class: 2xx, 4xx, 5xx.

Decisions (the reasons are in the docstrings below):
- 8-bit body, remote without 8BITMIME: sent anyway without BODY=, as Postfix and sendmail do.
- Needs SMTPUTF8, remote without it: 553 5.6.7 for every recipient, nothing sent (RFC 6531 §3.2).
- Bigger than the remote's SIZE: 552 5.3.4 for every recipient, nothing sent (RFC 1870 §6).
- Malformed, overlong or endless replies end the session with a 4.5.0 error (replies.py).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum, auto

from mailhouse.errors import Reply
from mailhouse.proto.smtp.replies import (
    MAX_BUFFERED,
    Capabilities,
    RawReply,
    ReplyError,
    ReplyReader,
    as_temporary,
    malformed,
)

# Local replies, for outcomes no remote server stated. The code class carries the outcome.
SMTPUTF8_UNSUPPORTED = Reply(553, "5.6.7", "SMTPUTF8 is required but not supported by the remote "
                                           "server")
TOO_BIG_FOR_REMOTE = Reply(552, "5.3.4", "Message size exceeds the remote server's limit")
BAD_SENDER = Reply(553, "5.1.7", "Sender address cannot be sent over SMTP")
BAD_RECIPIENT = Reply(553, "5.1.3", "Recipient address cannot be sent over SMTP")
TIMEOUT = Reply(451, "4.4.2", "Timed out waiting for the remote server")
FINAL_TIMEOUT = Reply(451, "4.4.2", "Timed out waiting for the reply to the end of data; "
                                    "the message may have been delivered")
LOST = Reply(451, "4.4.2", "Lost connection with the remote server")
LOST_AFTER_DOT = Reply(451, "4.4.2", "Lost connection after the end of data; the message may "
                                     "have been delivered")
UNEXPECTED_REPLY = Reply(451, "4.5.0", "Protocol error: unexpected reply from the remote server")
HELO_REJECTED = Reply(451, "4.5.0", "Protocol error: the remote server refused EHLO and HELO")

_NEWLINES = re.compile(rb"\r\n|\r|\n")

# --- transactions and events ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Transaction:
    """One message for one connection: envelope plus what it needs from the remote."""

    sender: str  # "" for the null reverse-path <>
    recipients: tuple[str, ...]
    size: int
    body_8bit: bool = False
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class RecipientReply:
    recipient: str
    reply: Reply

    @property
    def delivered(self) -> bool:
        return 200 <= self.reply.code < 300

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500


# --- events --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more happens until the remote sends more bytes (or the transport times out)."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """The transport must do the TLS handshake, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is set up; transactions may start. `greeting` is the server's 220 banner."""

    capabilities: Capabilities
    tls: bool
    greeting: Reply


@dataclass(frozen=True, slots=True)
class SendBody:
    """The remote said 354: stream the message with `send_body()`, then `end_body()`."""


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """One reply per recipient, in the transaction's order. `replied` is False when the remote
    answered nothing in this transaction (a pooled connection that died while idle: nothing was
    delivered, so trying a fresh connection cannot duplicate)."""

    results: tuple[RecipientReply, ...]
    replied: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """The transport must flush and close. `reply` says why (None after our QUIT)."""

    reply: Reply | None


Event = NeedData | StartTls | Ready | SendBody | TransactionDone | Closed


# --- the state table -----------------------------------------------------------------------------

class State(Enum):
    GREETING = auto()  # connected, waiting for 220
    HELLO = auto()  # EHLO / HELO / STARTTLS sent
    TLS = auto()  # STARTTLS accepted, the transport is doing the handshake
    READY = auto()  # no transaction
    COMMANDS = auto()  # replies to transaction commands (RSET, MAIL, RCPT, DATA, dot) pending
    BODY = auto()  # 354 received, the transport streams the message
    QUIT = auto()  # QUIT sent
    CLOSED = auto()


class Step(Enum):
    """What a pending reply answers."""

    GREETING = auto()
    EHLO = auto()
    HELO = auto()
    STARTTLS = auto()
    RSET = auto()
    MAIL = auto()
    RCPT = auto()
    DATA = auto()
    DOT = auto()  # the end of data: the reply that decides delivery
    DOT_DISCARD = auto()  # an empty DATA we had to finish; its reply means nothing
    QUIT = auto()


# Which API call is legal in which state; anything else is a bug in the transport.
CALLS: dict[str, frozenset[State]] = {
    "start_transaction": frozenset({State.READY}),
    "send_body": frozenset({State.BODY}),
    "end_body": frozenset({State.BODY}),
    "tls_established": frozenset({State.TLS}),
    "quit": frozenset({State.READY}),
}
# States in which received bytes are parsed as replies.
_PARSING = frozenset({State.GREETING, State.HELLO, State.READY, State.COMMANDS, State.QUIT})


class DataEncoder:
    """Message bytes → DATA wire bytes, streaming (RFC 5321 §4.5.2, §2.3.8).

    Every bare LF and bare CR becomes CRLF and a line starting with "." gets another, so what
    goes out has CRLF line ends only and no remote can see an end of data we did not mean
    (SMTP smuggling, security checklist 28). A CR at the end of one chunk waits for the next to
    know whether it begins a CRLF."""

    __slots__ = ("_line_start", "_pending_cr")

    def __init__(self) -> None:
        self._line_start = True
        self._pending_cr = False

    def encode(self, chunk: bytes) -> bytes:
        data = b"\r" + chunk if self._pending_cr else chunk
        self._pending_cr = data.endswith(b"\r")
        if self._pending_cr:
            data = data[:-1]
        if not data:
            return b""
        data = _NEWLINES.sub(b"\r\n", data)
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._line_start = data.endswith(b"\r\n")
        return data

    def finish(self) -> bytes:
        """The rest: a held CR as a line end, a CRLF if the message lacked one, the final dot."""
        tail = b""
        if self._pending_cr or not self._line_start:
            tail = b"\r\n"
        self._pending_cr, self._line_start = False, True
        return tail + b".\r\n"


def to_wire(message: bytes) -> bytes:
    """A whole message as DATA content, terminator included."""
    encoder = DataEncoder()
    return encoder.encode(message) + encoder.finish()


def _sendable(address: str) -> bool:
    """No control characters in a command argument: CR/LF would inject commands."""
    return not any(ord(c) < 32 or ord(c) == 127 for c in address)


@dataclass(slots=True)
class _Tx:
    tx: Transaction
    results: list[Reply | None]  # None: not decided yet
    accepted: list[int] = field(default_factory=list)  # indices whose RCPT got 2xx
    rcpts: deque[int] = field(default_factory=deque)  # indices still to send (no PIPELINING)
    mail: Reply | None = None
    replied: bool = False
    encoder: DataEncoder = field(default_factory=DataEncoder)

    @property
    def mail_failed(self) -> bool:
        return self.mail is not None and not 200 <= self.mail.code < 300


class SmtpClient:
    """One outbound SMTP connection's protocol state.

    `starttls`: issue STARTTLS when the server offers it (the transport has a TLS context).
    `tls_active`: the connection is already encrypted (implicit TLS): never STARTTLS."""

    def __init__(self, helo_name: str, *, starttls: bool = True, tls_active: bool = False) -> None:
        if not helo_name or not helo_name.isascii() or not _sendable(helo_name) or (
                " " in helo_name):
            raise ValueError(f"invalid HELO name {helo_name!r}")
        self.helo_name = helo_name
        self.want_tls = starttls
        self.tls_active = tls_active
        self.state = State.GREETING
        self.capabilities = Capabilities(False)
        self.greeting: Reply | None = None
        self._reader = ReplyReader()
        self._overflow = False
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: deque[tuple[Step, int]] = deque([(Step.GREETING, 0)])
        self._tx: _Tx | None = None
        self._dirty = False  # a transaction may be open at the server: RSET before the next
        self._closed_reply: Reply | None = None

    # --- transport-facing API ----------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state in (State.TLS, State.CLOSED):
            return  # RFC 3207 §4.2: nothing sent before the handshake may be read after it
        if self._reader.buffered + len(data) > MAX_BUFFERED:
            self._overflow = True
            return
        self._reader.feed(data)

    def data_to_send(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def next_event(self) -> Event:
        # Bounded: every round returns, or consumes bytes of a buffer capped at MAX_BUFFERED.
        for _ in range(MAX_BUFFERED + 2):
            if self._events:
                return self._events.popleft()
            if self.state is State.CLOSED:
                return Closed(self._closed_reply)
            if self.state not in _PARSING:
                return NeedData()
            if self._overflow:
                self._fail(malformed("too much data"))
                continue
            try:
                raw = self._reader.next()
            except ReplyError as exc:
                self._fail(malformed(str(exc)))
                continue
            if raw is None:
                return NeedData()
            self._dispatch(raw)
        raise AssertionError("unreachable: the reply buffer is bounded")

    @property
    def awaiting_final_reply(self) -> bool:
        """True while waiting for the reply to the end of data (RFC 5321 §4.5.3.2.6: 10 min)."""
        return bool(self._pending) and self._pending[0][0] is Step.DOT

    @property
    def awaiting_reply(self) -> bool:
        return bool(self._pending) and self.state in _PARSING

    def tls_established(self) -> None:
        """After the handshake: forget the capabilities learnt in clear text and say EHLO again
        (RFC 3207 §4.2)."""
        self._check("tls_established")
        self.tls_active = True
        self.capabilities = Capabilities(False)
        self._reader.clear()
        self.state = State.HELLO
        self._command(f"EHLO {self.helo_name}", Step.EHLO)

    def start_transaction(self, tx: Transaction) -> None:
        self._check("start_transaction")
        results: list[Reply | None] = [None] * len(tx.recipients)
        state = _Tx(tx, results)
        self._tx = state
        local = self._local_refusal(tx)
        if local is not None:
            refused: list[Reply | None] = [local] * len(tx.recipients)
            state.results = refused
            self._finish()
            return
        for i, rcpt in enumerate(tx.recipients):
            if _sendable(rcpt):
                state.rcpts.append(i)
            else:
                results[i] = BAD_RECIPIENT
        if not state.rcpts:
            self._finish()
            return
        self.state = State.COMMANDS
        if self._dirty:
            self._command("RSET", Step.RSET)
            if self.capabilities.pipelining:
                self._send_mail()
        else:
            self._send_mail()

    def send_body(self, chunk: bytes) -> None:
        self._check("send_body")
        assert self._tx is not None
        data = self._tx.encoder.encode(chunk)
        if data:
            self._out.append(data)

    def end_body(self) -> None:
        self._check("end_body")
        assert self._tx is not None
        self._out.append(self._tx.encoder.finish())
        self.state = State.COMMANDS
        self._pending.append((Step.DOT, 0))

    def quit(self) -> None:
        self._check("quit")
        self.state = State.QUIT
        self._command("QUIT", Step.QUIT)

    def timeout(self) -> None:
        """The transport waited too long for a reply (or to write)."""
        self._fail(FINAL_TIMEOUT if self.awaiting_final_reply else TIMEOUT)

    def connection_lost(self) -> None:
        if self.state is State.QUIT:
            self._close(None)
            return
        self._fail(LOST_AFTER_DOT if self.awaiting_final_reply else LOST)

    def abort(self, reply: Reply) -> None:
        """Give up on the session (e.g. the message could not be read mid-body). The transport
        must drop the connection without sending anything more: a truncated message must never
        be followed by the final dot."""
        self._fail(reply)

    # --- internals ---------------------------------------------------------------------------
    def _check(self, call: str) -> None:
        if self.state not in CALLS[call]:
            raise RuntimeError(f"{call}() not allowed in state {self.state.name}")

    def _command(self, line: str, step: Step, index: int = 0) -> None:
        self._out.append(line.encode("utf-8") + b"\r\n")
        self._pending.append((step, index))

    def _local_refusal(self, tx: Transaction) -> Reply | None:
        """What makes the message undeliverable over this connection before a byte is sent."""
        if not _sendable(tx.sender):
            return BAD_SENDER
        caps = self.capabilities
        needs_utf8 = tx.smtputf8 or not tx.sender.isascii() or not all(
            r.isascii() for r in tx.recipients)
        if needs_utf8 and not caps.smtputf8:
            # RFC 6531 §3.2: a message that needs SMTPUTF8 must not go to a server without it;
            # rewriting addresses or headers is not ours to do, so it is undeliverable here.
            return SMTPUTF8_UNSUPPORTED
        limit = caps.size
        if limit and tx.size > limit:
            return TOO_BIG_FOR_REMOTE  # RFC 1870 §6: do not send what the server will refuse
        return None

    def _mail_command(self, tx: Transaction) -> str:
        caps = self.capabilities
        params = []
        if caps.size is not None:
            params.append(f"SIZE={tx.size}")  # RFC 1870 §3
        if tx.body_8bit and caps.eightbitmime:
            # RFC 6152 §3. Without 8BITMIME the body still goes, unlabelled: converting to
            # quoted-printable would break the DKIM body hash, bouncing would refuse mail that
            # such servers pass through in practice; Postfix and sendmail send it too.
            params.append("BODY=8BITMIME")
        if caps.smtputf8 and (tx.smtputf8 or not tx.sender.isascii() or not all(
                r.isascii() for r in tx.recipients)):
            params.append("SMTPUTF8")  # RFC 6531 §3.4
        return " ".join([f"MAIL FROM:<{tx.sender}>", *params])

    def _send_mail(self) -> None:
        """MAIL, then with PIPELINING every RCPT and DATA in the same write (RFC 2920 §3.1:
        DATA ends the group); without it one command per reply."""
        state = self._tx
        assert state is not None
        self._command(self._mail_command(state.tx), Step.MAIL)
        if self.capabilities.pipelining:
            while state.rcpts:
                i = state.rcpts.popleft()
                self._command(f"RCPT TO:<{state.tx.recipients[i]}>", Step.RCPT, i)
            self._command("DATA", Step.DATA)

    def _send_next_rcpt(self) -> None:
        state = self._tx
        assert state is not None
        i = state.rcpts.popleft()
        self._command(f"RCPT TO:<{state.tx.recipients[i]}>", Step.RCPT, i)

    def _dispatch(self, raw: RawReply) -> None:
        if not self._pending:
            # A reply nobody asked for: a 421 on an idle connection is the server leaving;
            # anything else means we and the server disagree about the conversation.
            self._fail(raw.to_reply() if raw.code == 421 else UNEXPECTED_REPLY)
            return
        step, index = self._pending.popleft()
        reply = raw.to_reply()
        if self._tx is not None:
            self._tx.replied = True
        if raw.code == 421 and step is not Step.QUIT:
            self._fail(reply)  # RFC 5321 §3.8: the server is closing the connection
            return
        handler = _ON_REPLY[step]
        handler(self, raw, reply, index)

    def _on_greeting(self, raw: RawReply, reply: Reply, index: int) -> None:
        if raw.code != 220:
            self._fail(reply)
            return
        self.greeting = reply
        self.state = State.HELLO
        self._command(f"EHLO {self.helo_name}", Step.EHLO)

    def _on_ehlo(self, raw: RawReply, reply: Reply, index: int) -> None:
        if not 200 <= raw.code < 300:
            # RFC 5321 §3.2: a server that does not understand EHLO still takes HELO.
            self._command(f"HELO {self.helo_name}", Step.HELO)
            return
        self.capabilities = Capabilities.from_ehlo(raw.lines)
        if self.want_tls and not self.tls_active and self.capabilities.starttls:
            self._command("STARTTLS", Step.STARTTLS)
            return
        self._ready()

    def _on_helo(self, raw: RawReply, reply: Reply, index: int) -> None:
        if not 200 <= raw.code < 300:
            self._fail(reply if reply.code >= 400 else HELO_REJECTED)
            return
        self.capabilities = Capabilities(False)
        self._ready()

    def _on_starttls(self, raw: RawReply, reply: Reply, index: int) -> None:
        if raw.code != 220:
            # RFC 3207 §4: the client decides whether to go on. Opportunistic TLS (RFC 7435)
            # goes on in clear text, with the capabilities it has.
            self._ready()
            return
        self.state = State.TLS
        # Bytes after the 220 came before the handshake: an attacker's injected "replies"
        # (NO STARTTLS class b, CVE-2021-38371). Drop them.
        self._reader.clear()
        self._events.append(StartTls())

    def _ready(self) -> None:
        self.state = State.READY
        assert self.greeting is not None
        self._events.append(Ready(self.capabilities, self.tls_active, self.greeting))

    def _on_rset(self, raw: RawReply, reply: Reply, index: int) -> None:
        if not 200 <= raw.code < 300:
            self._fail(as_temporary(reply))
            return
        self._dirty = False
        if not self.capabilities.pipelining:
            self._send_mail()

    def _on_mail(self, raw: RawReply, reply: Reply, index: int) -> None:
        state = self._tx
        assert state is not None
        state.mail = reply
        if self.capabilities.pipelining:
            return  # RCPT and DATA replies follow; a failed MAIL outranks them (RFC 2920 §3.1)
        if state.mail_failed:
            self._finish()
        else:
            self._send_next_rcpt()

    def _on_rcpt(self, raw: RawReply, reply: Reply, index: int) -> None:
        state = self._tx
        assert state is not None
        if not state.mail_failed:
            if 200 <= raw.code < 300:
                state.accepted.append(index)
            else:
                state.results[index] = reply
        if self.capabilities.pipelining:
            return
        if state.rcpts:
            self._send_next_rcpt()
        elif state.accepted:
            self._command("DATA", Step.DATA)
        else:
            self._dirty = True  # MAIL was accepted: the transaction is open at the server
            self._finish()

    def _on_data(self, raw: RawReply, reply: Reply, index: int) -> None:
        state = self._tx
        assert state is not None
        if raw.code == 354:
            if state.accepted and not state.mail_failed:
                self.state = State.BODY
                self._events.append(SendBody())
            else:
                # RFC 2920 §3.1: the server took DATA although nobody can receive the message;
                # end it empty (just the dot) and ignore the outcome.
                self._out.append(b".\r\n")
                self._pending.append((Step.DOT_DISCARD, 0))
            return
        for i in state.accepted:
            state.results[i] = reply
        self._dirty = not state.mail_failed
        self._finish()

    def _on_dot(self, raw: RawReply, reply: Reply, index: int) -> None:
        state = self._tx
        assert state is not None
        for i in state.accepted:
            state.results[i] = reply
        self._finish()

    def _on_dot_discard(self, raw: RawReply, reply: Reply, index: int) -> None:
        self._finish()

    def _on_quit(self, raw: RawReply, reply: Reply, index: int) -> None:
        self._close(None)

    def _finish(self, default: Reply = UNEXPECTED_REPLY) -> None:
        """Emit the transaction's results; every undecided recipient gets the failed MAIL's
        reply, or `default` (why the session ended)."""
        state, self._tx = self._tx, None
        assert state is not None
        fallback = state.mail if state.mail_failed and state.mail is not None else default
        results = tuple(
            RecipientReply(rcpt, reply if reply is not None else fallback)
            for rcpt, reply in zip(state.tx.recipients, state.results, strict=True))
        self._events.append(TransactionDone(results, state.replied))
        if self.state is not State.CLOSED:
            self.state = State.READY

    def _fail(self, reply: Reply) -> None:
        """The session is over. A transaction in flight ends with `reply` (as a 4xx: a broken
        session is never the recipient's fault) for whoever is still undecided."""
        if self.state is State.CLOSED:
            return
        self._pending.clear()
        self.state = State.CLOSED
        if self._tx is not None:
            self._finish(as_temporary(reply))
        self._close(reply)

    def _close(self, reply: Reply | None) -> None:
        self.state = State.CLOSED
        self._closed_reply = reply
        self._pending.clear()
        self._reader.clear()
        self._events.append(Closed(reply))


_ON_REPLY = {
    Step.GREETING: SmtpClient._on_greeting,
    Step.EHLO: SmtpClient._on_ehlo,
    Step.HELO: SmtpClient._on_helo,
    Step.STARTTLS: SmtpClient._on_starttls,
    Step.RSET: SmtpClient._on_rset,
    Step.MAIL: SmtpClient._on_mail,
    Step.RCPT: SmtpClient._on_rcpt,
    Step.DATA: SmtpClient._on_data,
    Step.DOT: SmtpClient._on_dot,
    Step.DOT_DISCARD: SmtpClient._on_dot_discard,
    Step.QUIT: SmtpClient._on_quit,
}
