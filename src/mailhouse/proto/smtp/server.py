"""The SMTP server core: bytes in, events out, replies as bytes (RFC 5321, 1870, 2920, 3030,
3207, 4954, 6152, 6531, 2034). No sockets, no clock, no storage: the transport feeds
`receive_data()`, pulls `next_event()`, answers decisions with `respond()`, and writes
`data_to_send()`.

PIPELINING (RFC 2920) falls out of the design: the core parses the next command only after the
previous decision is answered, so replies keep their order and state never leaks between
pipelined transactions.

AUTH (RFC 4954) exists only where `auth_mechanisms` is set (the submission ports), and only
inside TLS: a password never crosses the wire in cleartext, so before TLS it is neither
announced nor accepted: `530 5.7.0 Must issue a STARTTLS command first`, the reply RFC 3207 §4
gives for a command that needs TLS (Postfix and Exim answer the same; RFC 4954 §6's 538 is meant
for a mechanism that needs encryption where others would not). The SASL exchange is a state of
its own (State.AUTH): every line then is a SASL response, never a command. Checking the password
is the service's decision (`AuthCredentials`), like MAIL and RCPT.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from mailhouse.errors import Reply
from mailhouse.proto import sasl
from mailhouse.proto.input_buffer import InputBuffer
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.data import BodyScanner, DotReader
from mailhouse.proto.smtp.grammar import (
    ParseError,
    is_number,
    parse_auth,
    parse_bdat,
    parse_path,
    split_command,
)


@dataclass(frozen=True, slots=True)
class SmtpServerConfig:
    hostname: str
    max_message_size: int = 52_428_800
    max_recipients: int = 100
    max_command_line: int = 512  # RFC 5321 §4.5.3.1.4
    max_text_line: int = 1000  # RFC 5321 §4.5.3.1.6
    max_errors: int = 20
    max_received_headers: int = 50  # RFC 5321 §6.3 loop detection
    tls_available: bool = True
    banner_text: str = "ESMTP mailhouse"
    # SASL mechanisms for AUTH (RFC 4954), announced and accepted only inside TLS. Empty (the MX
    # port): no AUTH at all, 503 as before.
    auth_mechanisms: tuple[str, ...] = ()
    # Submission (RFC 6409 §4.3, RFC 4954 §6): MAIL before a successful AUTH gets 530 5.7.0.
    require_auth: bool = False
    max_auth_line: int = 12288  # RFC 4954 §4: a SASL response line may be this long
    # Commands that move no mail (see JUNK) a client may send before each further one counts as
    # an error, as Postfix's smtpd_junk_command_limit; forgiven when a message is delivered.
    junk_command_limit: int = 100


class State(Enum):
    INIT = auto()  # greeted, no HELO/EHLO yet
    READY = auto()  # HELO/EHLO done, no transaction
    MAIL = auto()  # reverse-path accepted
    RCPT = auto()  # at least one recipient accepted
    DATA = auto()  # reading DATA content
    CHUNK = auto()  # reading the octets of a BDAT chunk
    BETWEEN_CHUNKS = auto()  # BDAT transaction open, waiting for the next BDAT
    WAIT = auto()  # a decision event is out; nothing parsed until respond()
    TLS = auto()  # STARTTLS accepted; waiting for the handshake
    AUTH = auto()  # inside a SASL exchange: each line is a response to a 334 challenge
    CLOSED = auto()


_ANY = frozenset({State.INIT, State.READY, State.MAIL, State.RCPT, State.BETWEEN_CHUNKS})
_SESSION = frozenset({State.READY, State.MAIL, State.RCPT, State.BETWEEN_CHUNKS})

# The state table: in which states each verb may be used. Anything else is out of sequence.
ALLOWED: dict[str, frozenset[State]] = {
    "EHLO": _ANY,
    "HELO": _ANY,
    "MAIL": frozenset({State.READY}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.MAIL, State.RCPT}),
    "BDAT": _ANY,  # always consumes its octets (RFC 3030 §2), then judged
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY,
    "HELP": _ANY,
    "VRFY": _ANY,
    "EXPN": _ANY,
    "STARTTLS": frozenset({State.INIT, State.READY}),
    # RFC 4954 §4: after EHLO, never during a mail transaction.
    "AUTH": frozenset({State.READY}),
}

# Commands that can be repeated forever without moving any mail, as Postfix flags them
# (SMTPD_CMD_FLAG_LIMIT: HELO, EHLO, RSET, NOOP, VRFY, ETRN); HELP is ours. EXPN is always
# refused, so it already counts as an error every time.
JUNK = frozenset({"HELO", "EHLO", "RSET", "NOOP", "VRFY", "HELP"})

OK = Reply(250, "2.0.0", "Ok")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
UNKNOWN = Reply(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")  # RFC 5321 §4.5.3.1.10
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")  # RFC 1870
BARE_NEWLINE = Reply(521, "5.5.2", "Error: bare <CR> or <LF> received")
LONG_TEXT_LINE = Reply(554, "5.6.0", "Message has a line longer than the limit")
MAIL_LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SHUTDOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
# RFC 4954 §6 replies.
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Authentication not enabled")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_UNSUPPORTED = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")
# One text for every failed login, whatever failed (security checklist 11).
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# A line with no LF this long is not a command any client sends: stop reading it.
_DISCARD_LIMIT = 65536


class SmtpServer:
    """One SMTP session's protocol state."""

    def __init__(self, config: SmtpServerConfig, *, tls_active: bool = False) -> None:
        self.config = config
        self.state = State.INIT
        self.tls_active = tls_active
        self.helo_name: str | None = None
        self.esmtp = False
        self.authenticated = False
        self.recipients = 0
        self.errors = 0
        self.junk_commands = 0  # JUNK commands since the session began or a message was accepted
        self._sasl: sasl.Mechanism | None = None
        self._in = InputBuffer()  # received, not yet parsed: an offset, never a copy per line
        self._out: list[bytes] = []
        self._events: deque[ev.Event] = deque()
        self._pending: ev.Event | None = None
        self._discarding = 0  # bytes of an overlong command line thrown away so far
        self._dot: DotReader | None = None
        self._scanner: BodyScanner | None = None
        self._aborted: Reply | None = None  # content arriving but to be refused
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_error: Reply | None = None  # BDAT to consume and then refuse
        self._transaction_mail: ev.MailFrom | None = None
        self._reply(Reply(220, None, f"{config.hostname} {config.banner_text}"))

    # --- transport-facing API ----------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED and self.state is not State.TLS:
            self._in.feed(data)

    def data_to_send(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def next_event(self) -> ev.Event:
        while not self._events:
            if self.state is State.CLOSED:
                return ev.Closed()
            if self.state in (State.WAIT, State.TLS) or not self._step():
                return ev.NeedData()
        return self._events.popleft()

    def respond(self, reply: Reply) -> None:
        """Answer the decision event last returned (MailFrom, RcptTo, DataComplete or
        AuthCredentials)."""
        pending, self._pending = self._pending, None
        if pending is None or self.state is not State.WAIT:
            raise RuntimeError("respond() without a pending decision")
        accepted = 200 <= reply.code < 300
        if isinstance(pending, ev.MailFrom):
            self.state = State.MAIL if accepted else State.READY
            if not accepted:
                self._transaction_mail = None
        elif isinstance(pending, ev.RcptTo):
            self.recipients += accepted
            self.state = State.RCPT if self.recipients else State.MAIL
        elif isinstance(pending, ev.AuthCredentials):
            # RFC 4954 §4: 235 makes the session authenticated; anything else leaves it as it
            # was, and the client may try again (the service throttles that).
            self.authenticated = reply.code == 235
            self.state = State.READY
        else:  # DataComplete: the transaction is over whatever the answer
            self._reset_transaction(notify=False)
            self.state = State.READY
            if accepted:
                # As Postfix: a client that delivers is doing real work, so the RSETs and NOOPs
                # of a long multi-message session never add up to a disconnection.
                self.junk_commands = 0
        self._reply(reply)
        if reply.code == 421:
            self._close()
        elif not accepted and not isinstance(pending, ev.DataComplete):
            self._count_error()

    def tls_established(self) -> None:
        """After the handshake: forget everything said before it (RFC 3207 §4.2)."""
        self.tls_active = True
        self.helo_name, self.esmtp = None, False
        self.authenticated, self._sasl = False, None  # never set before TLS; forget anyway
        self._in.clear()
        self.state = State.INIT

    def timeout(self) -> None:
        """The transport's idle or data timer ran out."""
        if self.state is not State.CLOSED:
            self._reply(TIMEOUT)
            self._close()

    def shutdown(self) -> bool:
        """Ask to stop. False while a message is in flight: finish it, ask again later."""
        if self.state in (State.DATA, State.CHUNK, State.WAIT):
            return False
        if self.state is not State.CLOSED:
            self._reply(SHUTDOWN)
            self._close()
        return True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (the transport pauses reading when this grows)."""
        return len(self._in)

    @property
    def in_data(self) -> bool:
        return self.state in (State.DATA, State.CHUNK)

    @property
    def smtputf8(self) -> bool:
        pending = self._transaction_mail
        return bool(pending and pending.smtputf8)

    # --- internals ---------------------------------------------------------------------------
    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _close(self) -> None:
        self.state = State.CLOSED
        self._in.clear()

    def _emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def _decide(self, event: ev.Event) -> None:
        self._pending = event
        self.state = State.WAIT
        self._emit(event)

    def _count_error(self) -> bool:
        self.errors += 1
        if self.errors >= self.config.max_errors:
            self._reply(TOO_MANY_ERRORS)
            self._close()
            return True
        return False

    def _error(self, reply: Reply) -> None:
        self._reply(reply)
        self._count_error()

    def _reset_transaction(self, *, notify: bool = True) -> None:
        if notify and self.state in (State.MAIL, State.RCPT, State.BETWEEN_CHUNKS):
            self._emit(ev.TransactionReset())
        self.recipients = 0
        self._transaction_mail = None
        self._dot = self._scanner = None
        self._aborted = None

    def _step(self) -> bool:
        """Make progress on the buffer; False when more bytes are needed."""
        if self.state is State.DATA:
            return self._step_data()
        if self.state is State.CHUNK:
            return self._step_chunk()
        in_auth = self.state is State.AUTH
        limit = self.config.max_auth_line if in_auth else self.config.max_command_line
        nl = self._in.find_lf()
        if self._discarding or nl < 0:
            return self._step_overlong(nl, limit)
        if nl + 1 > limit:
            self._in.skip(nl + 1)
            self._line_too_long()
            return True
        line = self._in.take(nl + 1)
        if not line.endswith(b"\r\n"):
            return self._bare_newline()
        if in_auth:
            self._auth_response(line[:-2])
        else:
            self._command(line[:-2])
        return True

    def _line_too_long(self) -> None:
        if self.state is State.AUTH:  # RFC 4954 §4: the exchange is over
            self._sasl, self.state = None, State.READY
            self._error(AUTH_LINE_TOO_LONG)
        else:
            self._error(LINE_TOO_LONG)

    def _step_overlong(self, nl: int, limit: int) -> bool:
        if nl >= 0:  # the end of a line we have been throwing away
            self._in.skip(nl + 1)
            self._discarding = 0
            self._line_too_long()
            return True
        if len(self._in) > limit:
            self._discarding += len(self._in)
            self._in.clear()
            if self._discarding > _DISCARD_LIMIT:
                self._reply(Reply(421, "4.7.0", "Line too long, closing connection"))
                self._close()
                return True
        return False

    def _bare_newline(self) -> bool:
        # As Postfix's smtpd_forbid_bare_newline = yes: refuse and hang up, so a message can
        # never be cut where another server would not cut it (SMTP smuggling).
        if self._scanner is not None and self._aborted is None:  # one notice per message
            self._emit(ev.DataAborted(BARE_NEWLINE))
        self._reply(BARE_NEWLINE)
        self._close()
        return True

    # --- commands ----------------------------------------------------------------------------
    def _command(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error(Reply(500, "5.5.2", "Invalid UTF-8 in command"))
            return
        verb, args = split_command(line)
        allowed = ALLOWED.get(verb)
        if allowed is None:
            self._error(UNKNOWN)
            return
        if self.state not in allowed:
            self._out_of_sequence(verb)
            return
        handler = _HANDLERS[verb]
        handler(self, args)
        if verb in JUNK:
            self._count_junk()

    def _count_junk(self) -> None:
        """Past `junk_command_limit`, every junk command is also an error, so a client looping
        on NOOP (or RSET, EHLO…) is closed at `max_errors` like one sending garbage."""
        self.junk_commands += 1
        if self.junk_commands > self.config.junk_command_limit and self.state is not State.CLOSED:
            self._count_error()

    def _out_of_sequence(self, verb: str) -> None:
        if self.state is State.INIT and verb in ("MAIL", "RCPT", "DATA"):
            self._error(Reply(503, "5.5.1", "Send HELO/EHLO first"))
        elif verb == "MAIL" and self.state in (State.MAIL, State.RCPT):
            self._error(Reply(503, "5.5.1", "Nested MAIL command"))
        elif verb == "RCPT":
            self._error(Reply(503, "5.5.1", "Need MAIL command"))
        elif verb == "STARTTLS":
            text = "TLS already active" if self.tls_active else "STARTTLS not allowed now"
            self._error(Reply(503, "5.5.1", text))
        elif verb == "AUTH" and not self.config.auth_mechanisms:
            self._error(AUTH_NOT_ENABLED)
        elif verb == "AUTH":
            self._error(Reply(503, "5.5.1", "Send EHLO first") if self.state is State.INIT
                        else AUTH_IN_TRANSACTION)
        else:
            self._error(BAD_SEQUENCE)

    def _cmd_helo(self, args: str, *, extended: bool) -> None:
        name = args.strip()
        if not name or " " in name or not name.isprintable():
            self._error(Reply(501, "5.5.4", "Syntax: EHLO hostname" if extended else
                              "Syntax: HELO hostname"))
            return
        self._reset_transaction()
        self.helo_name, self.esmtp, self.state = name, extended, State.READY
        self._emit(ev.Helo(name, extended))
        if not extended:
            self._reply(Reply(250, None, self.config.hostname))
            return
        lines = [
            self.config.hostname,
            "PIPELINING",
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
        ]
        if self.config.tls_available and not self.tls_active:
            lines.append("STARTTLS")
        if self._auth_offered:
            lines.append("AUTH " + " ".join(self.config.auth_mechanisms))
        self._reply(Reply(250, None, "\n".join(lines)))

    @property
    def _auth_offered(self) -> bool:
        """RFC 4954 §4 with RFC 8314 §3: passwords only inside TLS, so AUTH is not even
        announced before it (stripping it would gain an attacker nothing)."""
        return bool(self.config.auth_mechanisms) and self.tls_active

    def _cmd_ehlo(self, args: str) -> None:
        self._cmd_helo(args, extended=True)

    def _cmd_helo_plain(self, args: str) -> None:
        self._cmd_helo(args, extended=False)

    def _cmd_mail(self, args: str) -> None:
        if self.config.require_auth and not self.authenticated:
            self._error(AUTH_REQUIRED)  # RFC 4954 §6
            return
        try:
            path = parse_path(args, "FROM:", allow_null=True, utf8=None if self.esmtp else False)
        except ParseError as exc:
            self._error(exc.reply)
            return
        params = path.params
        if params and not self.esmtp:
            self._error(Reply(555, "5.5.4", "Parameters need EHLO"))
            return
        size: int | None = None
        body_8bit = False
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not is_number(value) or len(value) > 18:
                    self._error(Reply(501, "5.5.4", "Bad SIZE parameter"))
                    return
                size = int(value)
                if size > self.config.max_message_size:
                    self._error(TOO_BIG)
                    return
            elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                body_8bit = value.upper() == "8BITMIME"
            elif key == "SMTPUTF8" and value is None:
                pass
            elif key == "AUTH" and value is not None and self._auth_offered:
                # RFC 4954 §5: the original submitter, as a relaying client asserts it. Accepted
                # (a server announcing AUTH must) and not trusted: we treat it as AUTH=<>.
                pass
            else:
                self._error(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
                return
        event = ev.MailFrom(path.address, size, body_8bit, "SMTPUTF8" in params)
        self._transaction_mail = event
        self._decide(event)

    def _cmd_rcpt(self, args: str) -> None:
        try:
            path = parse_path(args, "TO:", allow_null=False, utf8=self.smtputf8)
        except ParseError as exc:
            self._error(exc.reply)
            return
        if path.params:
            self._error(Reply(555, "5.5.4", "Unsupported RCPT parameter"))
            return
        if self.recipients >= self.config.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452, and the recipients already accepted stay.
            self._reply(TOO_MANY_RECIPIENTS)
            return
        self._decide(ev.RcptTo(path.address))

    def _cmd_data(self, args: str) -> None:
        if args.strip():
            self._error(Reply(501, "5.5.4", "DATA takes no arguments"))
            return
        if self.state is not State.RCPT:
            self._error(NO_VALID_RECIPIENTS)
            return
        self._reply(Reply(354, None, "End data with <CR><LF>.<CR><LF>"))
        self._dot = DotReader(max_pending=max(self.config.max_text_line * 4, 65536))
        self._scanner = BodyScanner(self.config.max_text_line)
        self._aborted = None
        self.state = State.DATA
        self._emit(ev.DataStart())

    def _step_data(self) -> bool:
        assert self._dot is not None and self._scanner is not None
        result = self._dot.read(self._in)
        if not result.consumed:
            return False
        if not self._content(result.content):
            return True
        if result.finished:
            self._finish_content()
        return True

    def _content(self, data: bytes) -> bool:
        """Check and pass on content. False when the session has been closed for it."""
        scanner = self._scanner
        assert scanner is not None
        scanner.feed(data)
        if scanner.bare_newline:
            return not self._bare_newline()
        if self._aborted is None and scanner.size > self.config.max_message_size:
            self._aborted = TOO_BIG
            self._emit(ev.DataAborted(TOO_BIG))
        if self._aborted is None and data:
            self._emit(ev.DataChunk(data))
        return True

    def _finish_content(self) -> None:
        scanner = self._scanner
        assert scanner is not None
        scanner.end()
        if scanner.bare_newline:  # BDAT LAST content ending in a bare CR
            self._bare_newline()
            return
        refusal = self._aborted
        if refusal is None and scanner.long_line:
            refusal = LONG_TEXT_LINE
        if refusal is None and scanner.received > self.config.max_received_headers:
            refusal = MAIL_LOOP
        if refusal is not None:
            if self._aborted is None:
                self._emit(ev.DataAborted(refusal))
            self._reset_transaction(notify=False)
            self.state = State.READY
            self._error(refusal)
            return
        self._decide(ev.DataComplete(scanner.size, scanner.received))

    def _cmd_bdat(self, args: str) -> None:
        try:
            size, last = parse_bdat(args)
        except ParseError as exc:
            # The size is unknown, so the octets cannot be skipped: the stream is lost.
            self._reply(exc.reply)
            self._close()
            return
        self._chunk_left, self._chunk_last, self._chunk_error = size, last, None
        if self.state in (State.INIT, State.READY):
            self._chunk_error = BAD_SEQUENCE
        elif self.state is State.MAIL:
            self._chunk_error = NO_VALID_RECIPIENTS
        elif self._scanner is None:  # first chunk of the message (RFC 3030 §2)
            self._scanner = BodyScanner(self.config.max_text_line)
            self._emit(ev.DataStart())
        self.state = State.CHUNK

    def _step_chunk(self) -> bool:
        if self._chunk_left:
            if not self._in:
                return False
            if self._chunk_error is None:
                piece = self._in.take(self._chunk_left)
                self._chunk_left -= len(piece)
                if not self._content(piece):
                    return True
            else:  # octets to consume and refuse: not even copied
                size = min(self._chunk_left, len(self._in))
                self._in.skip(size)
                self._chunk_left -= size
            if self._chunk_left:
                return True
        error = self._chunk_error or self._aborted
        if error is not None:
            if self._chunk_error is None:  # the transaction failed (size): it is over
                self._reset_transaction(notify=False)
            self.state = State.READY if self.helo_name else State.INIT
            if self._chunk_error is NO_VALID_RECIPIENTS:
                self.state = State.MAIL
            self._error(error)
        elif self._chunk_last:
            self._finish_content()
        else:
            assert self._scanner is not None
            self.state = State.BETWEEN_CHUNKS
            self._reply(Reply(250, "2.0.0", f"{self._scanner.size} octets received"))
        return True

    def _cmd_rset(self, args: str) -> None:
        self._reset_transaction()
        self.state = State.READY if self.helo_name else State.INIT
        self._reply(OK)

    def _cmd_noop(self, args: str) -> None:
        self._reply(OK)

    def _cmd_quit(self, args: str) -> None:
        if self.state is State.BETWEEN_CHUNKS:
            self._emit(ev.TransactionReset())
        self._reply(Reply(221, "2.0.0", "Bye"))
        self._close()

    def _cmd_help(self, args: str) -> None:
        auth = " AUTH" if self.config.auth_mechanisms else ""
        self._reply(Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT "
                                        "RSET NOOP VRFY HELP QUIT STARTTLS" + auth))

    def _cmd_vrfy(self, args: str) -> None:
        if not args.strip():
            self._error(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        # RFC 5321 §3.5.3: 252 neither confirms nor denies, so addresses cannot be harvested.
        self._reply(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"))

    def _cmd_expn(self, args: str) -> None:
        self._error(Reply(502, "5.5.1", "EXPN not available"))

    def _cmd_auth(self, args: str) -> None:
        """RFC 4954 §4. The order of the checks matters: nothing about the credentials is looked
        at (not even their syntax) unless TLS protects them."""
        if not self.config.auth_mechanisms:
            self._error(AUTH_NOT_ENABLED)
            return
        if self.authenticated:
            self._error(ALREADY_AUTHENTICATED)
            return
        if not self.esmtp:
            self._error(Reply(503, "5.5.1", "Send EHLO first"))
            return
        if not self.tls_active:
            self._error(ENCRYPTION_REQUIRED)
            return
        try:
            name, initial = parse_auth(args)
        except ParseError as exc:
            self._error(exc.reply)
            return
        try:
            mechanism = sasl.new_mechanism(name, self.config.auth_mechanisms)
            self._sasl_outcome(mechanism, mechanism.start(initial))
        except sasl.SaslError as exc:
            self._sasl_failed(exc)

    def _auth_response(self, line: bytes) -> None:
        """A line inside the SASL exchange: the client's answer to our 334."""
        mechanism = self._sasl
        assert mechanism is not None
        try:
            self._sasl_outcome(mechanism, mechanism.step(line))
        except sasl.SaslError as exc:
            self._sasl_failed(exc)

    def _sasl_outcome(self, mechanism: sasl.Mechanism, step: sasl.Step) -> None:
        if isinstance(step, sasl.Challenge):
            self._sasl, self.state = mechanism, State.AUTH
            self._reply(Reply(334, None, step.encoded()))
            return
        self._sasl = None
        self._decide(ev.AuthCredentials(step.mechanism, step.authzid, step.username,
                                        step.password))

    def _sasl_failed(self, exc: sasl.SaslError) -> None:
        self._sasl, self.state = None, State.READY
        reply = {
            sasl.SaslErrorKind.UNSUPPORTED: AUTH_UNSUPPORTED,
            sasl.SaslErrorKind.CANCELLED: AUTH_CANCELLED,  # RFC 4954 §4: 501
            sasl.SaslErrorKind.BAD_BASE64: AUTH_BAD_BASE64,  # RFC 4954 §4: 501 5.5.2
            sasl.SaslErrorKind.FAILED: AUTH_FAILED,
        }[exc.kind]
        self._error(reply)

    def _cmd_starttls(self, args: str) -> None:
        if args.strip():
            self._error(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self.tls_active or self.authenticated:
            self._error(Reply(503, "5.5.1", "TLS already active"))
            return
        if not self.config.tls_available:
            self._error(Reply(454, "4.7.0", "TLS not available"))
            return
        self._reply(Reply(220, "2.0.0", "Ready to start TLS"))
        # RFC 3207 §4.2 and CVE-2011-0411: whatever was pipelined after STARTTLS is discarded.
        self._in.clear()
        self.state = State.TLS
        self._emit(ev.StartTls())


_HANDLERS = {
    "EHLO": SmtpServer._cmd_ehlo,
    "HELO": SmtpServer._cmd_helo_plain,
    "MAIL": SmtpServer._cmd_mail,
    "RCPT": SmtpServer._cmd_rcpt,
    "DATA": SmtpServer._cmd_data,
    "BDAT": SmtpServer._cmd_bdat,
    "RSET": SmtpServer._cmd_rset,
    "NOOP": SmtpServer._cmd_noop,
    "QUIT": SmtpServer._cmd_quit,
    "HELP": SmtpServer._cmd_help,
    "VRFY": SmtpServer._cmd_vrfy,
    "EXPN": SmtpServer._cmd_expn,
    "AUTH": SmtpServer._cmd_auth,
    "STARTTLS": SmtpServer._cmd_starttls,
}
