"""The POP3 server core: bytes in, events out, responses as bytes (RFC 1939, with CAPA and
response codes from RFC 2449 and RFC 3206, STLS from RFC 2595, AUTH from RFC 5034). No sockets,
no clock, no store: the transport feeds `receive_data()`, pulls `next_event()`, answers the
decision events, and writes `data_to_send()`.

A session: greeting, then AUTHORIZATION (USER/PASS or AUTH; `Credentials` goes to the service,
which answers `login_result()` with the maildrop snapshot), then TRANSACTION (message numbers
refer to that snapshot, DELE only marks), then QUIT: `Commit` with the marked messages, the
UPDATE state of RFC 1939 §6. Only `commit_result(True)` says "+OK"; a dropped connection,
`timeout()` or `shutdown()` never gets there, so nothing is deleted.

Decisions worth knowing (the "why" of each is at the code):
- PIPELINING (RFC 2449 §6.6) holds because the core parses one command at a time and not the
  next until the previous one is answered; responses keep their order.
- Passwords only inside TLS unless `allow_plaintext_auth`: before that, USER, PASS and AUTH get
  "-ERR Plaintext authentication disallowed…" (no response code: RFC 3206's [AUTH] speaks of
  credentials, and none were looked at) and CAPA lists neither USER nor SASL (RFC 2595 §2.2).
- AUTH with no argument lists the mechanisms usable now as a multi-line response (empty before
  TLS, like CAPA's SASL line). RFC 5034 does not define it, but it is the "old-style SASL
  discovery" MS Outlook relies on, and Dovecot answers it the same way.
- Lines end with CRLF or a bare LF: POP3 carries no message data from the client, so a sloppy
  line ending cannot smuggle anything; refusing it would only break sloppy clients.
- An AUTH command line may be as long as a SASL response (`max_auth_line`): RFC 5034 §4 asks
  clients to drop an initial response that would pass 255 octets, some do not, and the bytes
  are bounded either way.
- QUIT in TRANSACTION always emits `Commit`, even with nothing deleted: one way out for the
  transport (release the lock, log the session).
- RETR and TOP stream: the "+OK" goes out with the first `message_data()` (so a store failure
  before it can still be "-ERR [SYS/TEMP]"), every chunk is byte-stuffed as it comes
  (stuffing.py), and TOP is cut by the core on those bytes; `message_data()` returns False once
  TOP has its lines, so the transport may stop reading (or stream on: the rest is dropped).
- Only commands that are the client's mistake count toward `max_errors` (unknown, wrong state,
  bad syntax, failed logins); "no such message" is a normal answer about the mailbox.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto

from mailhouse.proto import sasl
from mailhouse.proto.input_buffer import InputBuffer
from mailhouse.proto.pop3 import events as ev
from mailhouse.proto.pop3.events import LoginResult, MaildropEntry
from mailhouse.proto.pop3.stuffing import MessageStuffer

__all__ = [
    "ALLOWED",
    "TRANSITIONS",
    "LoginResult",
    "MaildropEntry",
    "Pop3Server",
    "Pop3ServerConfig",
    "State",
]


def _printable(text: str) -> bool:
    return bool(text) and text.isprintable() and len(text) <= 200


@dataclass(frozen=True, slots=True)
class Pop3ServerConfig:
    hostname: str
    tls_available: bool = True  # STLS offered (plain port) when not already TLS
    allow_plaintext_auth: bool = False  # USER/PASS/AUTH before TLS (pop3.allow_plaintext_auth)
    implementation: str = "mailhouse"  # CAPA IMPLEMENTATION (RFC 2449 §6.9)
    max_line: int = 255  # RFC 2449 §4: a command line, CRLF included
    max_auth_line: int = 12288  # RFC 5034 §4: SASL responses are as long as the mechanism needs
    max_errors: int = 20  # client mistakes before "-ERR too many errors" and close
    # Commands that fetch and delete nothing (see JUNK) before each further one counts as an
    # error too; forgiven whenever a message is retrieved or deleted.
    junk_command_limit: int = 100

    def __post_init__(self) -> None:
        # Both go on the wire verbatim: no CR, LF or other control characters.
        if not (_printable(self.hostname) and _printable(self.implementation)):
            raise ValueError("hostname and implementation must be short printable text")
        if not 16 <= self.max_line <= self.max_auth_line or self.max_errors < 1:
            raise ValueError("need 16 <= max_line <= max_auth_line and max_errors >= 1")
        if self.junk_command_limit < 0:
            raise ValueError("need junk_command_limit >= 0")


class State(Enum):
    AUTHORIZATION = auto()  # RFC 1939 §4: greeted, not logged in
    SASL = auto()  # inside an AUTH exchange: every line answers a "+ " challenge (RFC 5034 §4)
    LOGIN = auto()  # Credentials out; waiting for login_result()
    TLS = auto()  # STLS accepted; waiting for tls_established()
    TRANSACTION = auto()  # RFC 1939 §5: logged in, maildrop locked
    RETRIEVE = auto()  # Retrieve out; the message streams through message_data()
    UPDATE = auto()  # RFC 1939 §6: Commit out; waiting for commit_result()
    CLOSED = auto()


_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_BOTH = _AUTHORIZATION | _TRANSACTION

# The state table. Which commands each state accepts (RFC 1939 §4-6, RFC 2449 §5, RFC 2595 §4,
# RFC 5034 §4; NOOP is TRANSACTION-only in RFC 1939 §5); anything else is "-ERR … not valid
# now". Commands are read only in AUTHORIZATION and TRANSACTION; in SASL every line is a SASL
# response, and in the other states nothing is parsed until the pending decision is answered.
ALLOWED: dict[str, frozenset[State]] = {
    "CAPA": _BOTH,
    "QUIT": _BOTH,
    "USER": _AUTHORIZATION,
    "PASS": _AUTHORIZATION,
    "AUTH": _AUTHORIZATION,
    "STLS": _AUTHORIZATION,
    "STAT": _TRANSACTION,
    "LIST": _TRANSACTION,
    "UIDL": _TRANSACTION,
    "RETR": _TRANSACTION,
    "TOP": _TRANSACTION,
    "DELE": _TRANSACTION,
    "NOOP": _TRANSACTION,
    "RSET": _TRANSACTION,
}

# ... and where each state may lead. Every change of state goes through `_enter()`, which checks
# it here; any state may close.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.AUTHORIZATION: frozenset({State.SASL, State.LOGIN, State.TLS}),
    State.SASL: frozenset({State.AUTHORIZATION, State.LOGIN}),
    State.LOGIN: frozenset({State.AUTHORIZATION, State.TRANSACTION}),
    State.TLS: frozenset({State.AUTHORIZATION}),  # RFC 2595 §4: back to AUTHORIZATION, blank
    State.TRANSACTION: frozenset({State.RETRIEVE, State.UPDATE}),
    State.RETRIEVE: frozenset({State.TRANSACTION}),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}

_PARSING = frozenset({State.AUTHORIZATION, State.SASL, State.TRANSACTION})

# Commands a client can repeat forever without fetching or deleting anything: counted against
# `junk_command_limit`, as SMTP counts NOOP and RSET (Postfix's smtpd_junk_command_limit). LIST,
# UIDL and AUTH count only without an argument (the whole listing, mechanism discovery): clients
# ask `LIST n`, `UIDL n` or `TOP n 0` once per message, and a maildrop may hold thousands.
JUNK = frozenset({"CAPA", "NOOP", "RSET", "STAT"})
_JUNK_WITHOUT_ARGS = frozenset({"LIST", "UIDL", "AUTH"})

# Responses. One text for every failed login, whatever failed (security checklist 11); [AUTH]
# (RFC 3206 §5) only where credentials were judged: some clients forget the saved password on it.
AUTH_FAILED = "-ERR [AUTH] Authentication failed"
LOGIN_ERRORS: dict[LoginResult, str] = {
    LoginResult.FAILED: AUTH_FAILED,
    LoginResult.THROTTLED: AUTH_FAILED,
    LoginResult.IN_USE: "-ERR [IN-USE] Mailbox is locked by another POP3 session",  # 2449 §8.1.1
    LoginResult.SYS_TEMP: "-ERR [SYS/TEMP] Temporary server problem, try again later",  # 3206 §4
    LoginResult.SYS_PERM: "-ERR [SYS/PERM] Mailbox unavailable",  # RFC 3206 §4
}
# Failures the client caused count toward max_errors; a locked or broken maildrop is not one.
_COUNTED = frozenset({LoginResult.FAILED, LoginResult.THROTTLED})
SASL_ERRORS: dict[sasl.SaslErrorKind, str] = {
    sasl.SaslErrorKind.UNSUPPORTED: "-ERR Unsupported authentication mechanism",
    sasl.SaslErrorKind.CANCELLED: "-ERR Authentication cancelled",  # RFC 5034 §4
    sasl.SaslErrorKind.BAD_BASE64: "-ERR Invalid base64 in authentication response",
    sasl.SaslErrorKind.FAILED: AUTH_FAILED,
}
NO_SUCH_MESSAGE = "-ERR no such message"
READ_FAILED = "-ERR [SYS/TEMP] Message cannot be read now, try again later"
COMMIT_FAILED = "-ERR [SYS/TEMP] Some deleted messages not removed"  # RFC 1939 §6
TOO_MANY_ERRORS = "-ERR Too many errors, closing connection"
LINE_TOO_LONG = "-ERR Line too long"
TIMEOUT = "-ERR Autologout: idle for too long"
SHUTDOWN = "-ERR [SYS/TEMP] Server shutting down, try again later"
# A line with no LF this long is not a command any client sends: stop reading it and hang up.
DISCARD_LIMIT = 65536
# NUL, CR alone and other control characters have no place in a command (TAB may be in a
# password); in a SASL line the strict base64 decoder refuses them.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Pop3Server:
    """One POP3 session's protocol state."""

    def __init__(self, config: Pop3ServerConfig, *, tls_active: bool = False) -> None:
        self.config = config
        self.tls_active = tls_active
        self.errors = 0
        self.junk_commands = 0  # JUNK commands since the session began or a message was fetched
        self._state = State.AUTHORIZATION
        self._in = InputBuffer()  # received, not yet parsed: an offset, never a copy per line
        self._out: list[bytes] = []
        self._events: deque[ev.Event] = deque()
        self._discarding = 0  # octets of an overlong line thrown away so far
        self._user: str | None = None  # the name from USER, until PASS
        self._sasl: sasl.Mechanism | None = None
        self._maildrop: tuple[MaildropEntry, ...] = ()
        self._deleted: set[int] = set()
        self._live_size = 0  # octets of the messages not marked deleted
        self._retrieve: ev.Retrieve | None = None
        self._stuffer: MessageStuffer | None = None
        self._answering = False  # the +OK of the Retrieve being answered is out
        self._line(f"+OK {config.hostname} POP3 ready")

    # --- transport-facing API ----------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Octets received and not yet parsed (the transport pauses reading when this grows)."""
        return len(self._in)

    def receive_data(self, data: bytes) -> None:
        # In TLS the bytes belong to the handshake, never to us; once closed, to nobody.
        if self._state is not State.CLOSED and self._state is not State.TLS:
            self._in.feed(data)

    def data_to_send(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out

    def next_event(self) -> ev.Event:
        while not self._events:
            if self._state is State.CLOSED:
                return ev.Closed()
            if self._state not in _PARSING or not self._step():
                return ev.NeedData()
        return self._events.popleft()

    def login_result(self, result: LoginResult, maildrop: Sequence[MaildropEntry] = ()) -> None:
        """Answer `Credentials`. With OK, `maildrop` is the snapshot this session works on: the
        messages in order, message number n being `maildrop[n - 1]`."""
        if self._answer(State.LOGIN):
            return
        if result is not LoginResult.OK:
            self._enter(State.AUTHORIZATION)
            # RFC 1939 §7 PASS: after -ERR the client starts again at USER (or AUTH).
            self._line(LOGIN_ERRORS[result])
            if result in _COUNTED:
                self._count_error()
            return
        snapshot = tuple(maildrop)
        if len({entry.uidl for entry in snapshot}) != len(snapshot):
            raise ValueError("UIDLs in one maildrop must be unique (RFC 1939 §7)")
        self._maildrop, self._deleted = snapshot, set()
        self._live_size = sum(entry.size for entry in snapshot)
        self._enter(State.TRANSACTION)
        self._line(f"+OK maildrop has {len(snapshot)} messages ({self._live_size} octets)")

    def message_data(self, chunk: bytes) -> bool:
        """Stream the next piece of the message a `Retrieve` asked for, exactly as stored; the
        core byte-stuffs it. False once TOP has every line it wants: the transport may stop
        reading and call `message_end()` (what it streams after that is dropped)."""
        if self._answer(State.RETRIEVE):
            return False
        stuffer = self._begin_answer()
        out = stuffer.feed(chunk)
        if out:
            self._out.append(out)
        return not stuffer.complete

    def message_end(self) -> None:
        """The message is complete: end the multi-line response (RFC 1939 §3)."""
        if self._answer(State.RETRIEVE):
            return
        self._out.append(self._begin_answer().finish())
        self._end_retrieve()
        self.junk_commands = 0  # a message went out: the client is doing real work

    def message_failed(self) -> None:
        """The store could not read the message. Before any data: "-ERR [SYS/TEMP]" and the
        session goes on. After data, a multi-line response cannot be ended honestly (its "."
        would vouch for a truncated message), so the core closes the session, without UPDATE."""
        if self._answer(State.RETRIEVE):
            return
        if self._answering:
            self._close()
            return
        self._line(READ_FAILED)
        self._end_retrieve()

    def commit_result(self, ok: bool) -> None:
        """Answer `Commit`: RFC 1939 §6 says "+OK" only once the deletions are done; either way
        the session is over."""
        if self._answer(State.UPDATE):
            return
        self._line(f"+OK {self.config.hostname} POP3 server signing off" if ok else COMMIT_FAILED)
        self._close()

    def tls_established(self) -> None:
        """After the STLS handshake: RFC 2595 §4, the session stays in AUTHORIZATION and nothing
        said before TLS counts (a USER before STLS is forgotten; the buffer was dropped at STLS,
        security checklist 4). No new greeting: POP3 sends none after STLS."""
        if self._state is not State.TLS:
            raise RuntimeError("tls_established() without STLS")
        self.tls_active = True
        self._user, self._sasl = None, None
        self._in.clear()
        self._enter(State.AUTHORIZATION)

    def timeout(self) -> None:
        """The autologout timer ran out (RFC 1939 §3): close WITHOUT the UPDATE state, so nothing
        marked is deleted. Silent when a line could not be read as one: in the middle of a
        multi-line response or of the TLS handshake."""
        if self._state is State.CLOSED:
            return
        if self._state is not State.TLS and not self._answering:
            self._line(TIMEOUT)
        self._close()

    def shutdown(self) -> bool:
        """The server is stopping: close without UPDATE. False while a decision is being answered
        (login check, message being sent, commit): the transport lets it finish and asks again."""
        if self._state in (State.LOGIN, State.RETRIEVE, State.UPDATE):
            return False
        if self._state is not State.CLOSED:
            if self._state is not State.TLS:
                self._line(SHUTDOWN)
            self._close()
        return True

    # --- internals ---------------------------------------------------------------------------
    def _answer(self, expected: State) -> bool:
        """Check an answer arrives when one is due. True: the session is already closed (by a
        timeout or an error), and the late answer is dropped."""
        if self._state is State.CLOSED:
            return True
        if self._state is not expected:
            raise RuntimeError(f"no pending decision for this answer in state {self._state.name}")
        return False

    def _enter(self, state: State) -> None:
        if state is not self._state and state not in TRANSITIONS[self._state]:
            raise AssertionError(f"illegal POP3 transition {self._state.name} -> {state.name}")
        self._state = state

    def _line(self, text: str) -> None:
        self._out.append(text.encode("utf-8") + b"\r\n")

    def _lines(self, first: str, lines: list[str]) -> None:
        """A multi-line response (RFC 1939 §3); none of our own lines starts with "."."""
        self._out.append("\r\n".join([first, *lines, "."]).encode("utf-8") + b"\r\n")

    def _close(self) -> None:
        self._state = State.CLOSED
        self._in.clear()
        self._user = self._sasl = self._stuffer = self._retrieve = None

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.config.max_errors and self._state is not State.CLOSED:
            self._line(TOO_MANY_ERRORS)
            self._close()

    def _error(self, text: str) -> None:
        """A response to a client mistake: it counts toward max_errors."""
        self._line(text)
        self._count_error()

    def _step(self) -> bool:
        """Make progress on the buffer; False when more bytes are needed."""
        nl = self._in.find_lf()
        limit = self._limit()
        if self._discarding or nl < 0:
            return self._step_overlong(nl, limit)
        if nl + 1 > limit:
            self._in.skip(nl + 1)
            self._line_too_long()
            return True
        line = self._in.take(nl + 1)[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._state is State.SASL:
            self._sasl_response(line)
        else:
            self._command(line)
        return True

    def _limit(self) -> int:
        if self._state is State.SASL or (self._state is State.AUTHORIZATION
                                         and self._in.peek(5).upper() == b"AUTH "):
            return self.config.max_auth_line
        return self.config.max_line

    def _step_overlong(self, nl: int, limit: int) -> bool:
        if nl >= 0:  # the end of a line we have been throwing away
            self._in.skip(nl + 1)
            self._discarding = 0
            self._line_too_long()
            return True
        if len(self._in) > limit:
            self._discarding += len(self._in)
            self._in.clear()
            if self._discarding > DISCARD_LIMIT:
                self._line(LINE_TOO_LONG + ", closing connection")
                self._close()
                return True
        return False

    def _line_too_long(self) -> None:
        if self._state is State.SASL:  # the exchange is over (RFC 5034 §4: -ERR ends AUTH)
            self._sasl = None
            self._enter(State.AUTHORIZATION)
        self._error(LINE_TOO_LONG)

    # --- commands ----------------------------------------------------------------------------
    def _command(self, raw: bytes) -> None:
        if _CONTROL.search(raw):
            self._error("-ERR Invalid character in command")
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error("-ERR Invalid UTF-8 in command")
            return
        # RFC 1939 §3: keywords are case-insensitive, separated from arguments by one space.
        verb, _, rest = line.lstrip(" ").partition(" ")
        verb = verb.upper()
        allowed = ALLOWED.get(verb)
        if allowed is None:
            self._error("-ERR Unknown command")
        elif self._state not in allowed:
            after = "after" if self._state is State.TRANSACTION else "before"
            self._error(f"-ERR {verb} not valid {after} login")
        else:
            _HANDLERS[verb](self, rest)
            if verb in JUNK or (verb in _JUNK_WITHOUT_ARGS and not self._args(rest)):
                self._count_junk()

    def _count_junk(self) -> None:
        """Past `junk_command_limit`, each junk command is also an error: a client looping on
        NOOP or CAPA is closed at `max_errors`. Real sessions (fetchmail, getmail, Thunderbird:
        CAPA, STLS, CAPA, login, STAT, UIDL, LIST, then per-message commands) send a handful."""
        self.junk_commands += 1
        if (self.junk_commands > self.config.junk_command_limit
                and self._state is not State.CLOSED):
            self._count_error()

    @staticmethod
    def _args(rest: str) -> list[str]:
        """Arguments, forgiving runs of spaces (sloppy clients send them)."""
        return [arg for arg in rest.split(" ") if arg]

    def _no_args(self, rest: str, verb: str) -> bool:
        if self._args(rest):
            self._error(f"-ERR {verb} takes no arguments")
            return False
        return True

    @property
    def _login_allowed(self) -> bool:
        """RFC 2595 §2.2-2.3 and RFC 8314: passwords only under TLS, unless configured."""
        return self.tls_active or self.config.allow_plaintext_auth

    def _refuse_plaintext(self) -> None:
        # Checked before anything about the credentials is looked at, even their syntax.
        hint = ", use STLS first" if self.config.tls_available else ""
        self._error(f"-ERR Plaintext authentication disallowed{hint}")

    def _cmd_capa(self, rest: str) -> None:
        """RFC 2449 §5. The list does not depend on the state: "capabilities available in the
        AUTHORIZATION state MUST be announced in both states". It does depend on TLS, which is
        why a client must ask again after STLS (RFC 2595 §4)."""
        if not self._no_args(rest, "CAPA"):
            return
        capabilities = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                        "EXPIRE NEVER"]  # RFC 2449 §6.7: we never delete on our own
        if self._login_allowed:
            capabilities += ["USER", "SASL " + " ".join(sasl.MECHANISMS)]
        if self.config.tls_available and not self.tls_active:
            capabilities.append("STLS")
        capabilities.append(f"IMPLEMENTATION {self.config.implementation}")
        self._lines("+OK Capability list follows", capabilities)

    def _cmd_quit(self, rest: str) -> None:
        if not self._no_args(rest, "QUIT"):
            return
        if self._state is State.TRANSACTION:  # RFC 1939 §6: the UPDATE state
            self._enter(State.UPDATE)
            self._events.append(ev.Commit(tuple(sorted(self._deleted))))
            return
        # RFC 1939 §4: QUIT in AUTHORIZATION ends the session without UPDATE.
        self._line(f"+OK {self.config.hostname} POP3 server signing off")
        self._close()

    def _cmd_user(self, rest: str) -> None:
        if not self._login_allowed:
            self._refuse_plaintext()
            return
        name = rest.strip(" ")
        if not name:
            self._error("-ERR Syntax: USER name")
            return
        # Whether the user exists is the service's business at PASS, in one answer for both.
        self._user = name
        self._line("+OK Send PASS")

    def _cmd_pass(self, rest: str) -> None:
        """RFC 1939 §7: the password is everything after "PASS ", spaces included ("a POP3
        server may treat spaces in the argument as part of the password")."""
        if not self._login_allowed:
            self._refuse_plaintext()
            return
        user, self._user = self._user, None
        if user is None:
            self._error("-ERR Send USER first")
        elif not rest:
            self._error(AUTH_FAILED)  # never right; the SASL layer answers an empty one alike
        else:
            self._enter(State.LOGIN)
            self._events.append(ev.Credentials("USER", user, rest, ""))

    def _cmd_auth(self, rest: str) -> None:
        """RFC 5034 §4: AUTH mechanism [initial-response]."""
        args = self._args(rest)
        if not args:  # see the module docstring: the mechanisms usable now, as Dovecot does
            self._lines("+OK", list(sasl.MECHANISMS) if self._login_allowed else [])
            return
        if not self._login_allowed:
            self._refuse_plaintext()
            return
        if len(args) > 2:
            self._error("-ERR Syntax: AUTH mechanism [initial-response]")
            return
        self._user = None
        initial = args[1].encode("utf-8") if len(args) == 2 else None
        try:
            mechanism = sasl.new_mechanism(args[0])
            self._sasl_outcome(mechanism, mechanism.start(initial))
        except sasl.SaslError as exc:
            self._sasl_failed(exc)

    def _sasl_response(self, line: bytes) -> None:
        """A line inside the exchange: the client's answer to our "+ " challenge."""
        mechanism = self._sasl
        assert mechanism is not None
        try:
            self._sasl_outcome(mechanism, mechanism.step(line))
        except sasl.SaslError as exc:
            self._sasl_failed(exc)

    def _sasl_outcome(self, mechanism: sasl.Mechanism, step: sasl.Step) -> None:
        if isinstance(step, sasl.Challenge):
            self._sasl = mechanism
            self._enter(State.SASL)
            self._line(f"+ {step.encoded()}")  # RFC 5034 §4: "+" SP base64, even when empty
            return
        self._sasl = None
        self._enter(State.LOGIN)
        self._events.append(ev.Credentials(step.mechanism, step.username, step.password,
                                           step.authzid))

    def _sasl_failed(self, exc: sasl.SaslError) -> None:
        self._sasl = None
        self._enter(State.AUTHORIZATION)
        self._error(SASL_ERRORS[exc.kind])

    def _cmd_stls(self, rest: str) -> None:
        if not self._no_args(rest, "STLS"):
            return
        if self.tls_active:
            self._error("-ERR Command not permitted when TLS active")  # RFC 2595 §4
            return
        if not self.config.tls_available:
            self._error("-ERR STLS not available")
            return
        self._line("+OK Begin TLS negotiation")
        # RFC 2595 §4 and CVE-2011-0411 (security checklist 4): anything pipelined after STLS
        # was sent in cleartext and is discarded, never run inside TLS.
        self._in.clear()
        self._user = None
        self._enter(State.TLS)
        self._events.append(ev.StartTls())

    # --- TRANSACTION -------------------------------------------------------------------------
    def _message(self, arg: str) -> int | None:
        """A message number (1-based, RFC 1939 §5) → its index, or None with the -ERR written.
        Not a client error in the max_errors sense: the client cannot always know."""
        number = int(arg) if arg.isascii() and arg.isdigit() else 0
        if not 1 <= number <= len(self._maildrop):
            self._line(NO_SUCH_MESSAGE)
            return None
        if number - 1 in self._deleted:
            self._line(f"-ERR Message {number} already deleted")
            return None
        return number - 1

    def _one_message(self, rest: str, verb: str) -> int | None:
        args = self._args(rest)
        if len(args) != 1:
            self._error(f"-ERR Syntax: {verb} msg")
            return None
        return self._message(args[0])

    def _live(self) -> list[int]:
        return [i for i in range(len(self._maildrop)) if i not in self._deleted]

    def _cmd_stat(self, rest: str) -> None:
        # RFC 1939 §5: exactly "+OK count size", deleted messages not counted.
        if self._no_args(rest, "STAT"):
            self._line(f"+OK {len(self._maildrop) - len(self._deleted)} {self._live_size}")

    def _cmd_list(self, rest: str) -> None:
        self._listing(rest, "LIST", lambda i: str(self._maildrop[i].size),
                      f"+OK {len(self._maildrop) - len(self._deleted)} messages "
                      f"({self._live_size} octets)")

    def _cmd_uidl(self, rest: str) -> None:
        self._listing(rest, "UIDL", lambda i: self._maildrop[i].uidl, "+OK")

    def _listing(self, rest: str, verb: str, value: Callable[[int], str], first: str) -> None:
        """LIST and UIDL (RFC 1939 §5, §7): one message as "+OK n value", or all of them as a
        multi-line response, deleted ones left out."""
        args = self._args(rest)
        if len(args) > 1:
            self._error(f"-ERR Syntax: {verb} [msg]")
        elif args:
            index = self._message(args[0])
            if index is not None:
                self._line(f"+OK {index + 1} {value(index)}")
        else:
            self._lines(first, [f"{i + 1} {value(i)}" for i in self._live()])

    def _cmd_retr(self, rest: str) -> None:
        index = self._one_message(rest, "RETR")
        if index is not None:
            self._start_retrieve(ev.Retrieve(index, None))

    def _cmd_top(self, rest: str) -> None:
        """RFC 1939 §7: TOP msg n, n a non-negative number of body lines."""
        args = self._args(rest)
        if len(args) != 2:
            self._error("-ERR Syntax: TOP msg n")
            return
        if not (args[1].isascii() and args[1].isdigit()):
            self._error("-ERR Invalid number of lines")
            return
        index = self._message(args[0])
        if index is not None:
            self._start_retrieve(ev.Retrieve(index, int(args[1])))

    def _start_retrieve(self, event: ev.Retrieve) -> None:
        self._retrieve, self._stuffer = event, MessageStuffer(event.top_lines)
        self._answering = False
        self._enter(State.RETRIEVE)
        self._events.append(event)

    def _begin_answer(self) -> MessageStuffer:
        """The +OK goes out with the first data, not with the event: until then the store may
        still fail and the answer be -ERR [SYS/TEMP] instead."""
        assert self._retrieve is not None and self._stuffer is not None
        if not self._answering:
            self._answering = True
            event = self._retrieve
            if event.top_lines is None:
                self._line(f"+OK {self._maildrop[event.index].size} octets")
            else:
                self._line("+OK Top of message follows")
        return self._stuffer

    def _end_retrieve(self) -> None:
        self._retrieve = self._stuffer = None
        self._answering = False
        self._enter(State.TRANSACTION)

    def _cmd_dele(self, rest: str) -> None:
        """RFC 1939 §5: only marks; the UPDATE state removes."""
        index = self._one_message(rest, "DELE")
        if index is not None:
            self._deleted.add(index)
            self._live_size -= self._maildrop[index].size
            self._line(f"+OK Message {index + 1} deleted")
            self.junk_commands = 0

    def _cmd_noop(self, rest: str) -> None:
        if self._no_args(rest, "NOOP"):
            self._line("+OK")

    def _cmd_rset(self, rest: str) -> None:
        if not self._no_args(rest, "RSET"):
            return
        self._deleted.clear()
        self._live_size = sum(entry.size for entry in self._maildrop)
        self._line(f"+OK Maildrop has {len(self._maildrop)} messages ({self._live_size} octets)")


_HANDLERS: dict[str, Callable[[Pop3Server, str], None]] = {
    "CAPA": Pop3Server._cmd_capa,
    "QUIT": Pop3Server._cmd_quit,
    "USER": Pop3Server._cmd_user,
    "PASS": Pop3Server._cmd_pass,
    "AUTH": Pop3Server._cmd_auth,
    "STLS": Pop3Server._cmd_stls,
    "STAT": Pop3Server._cmd_stat,
    "LIST": Pop3Server._cmd_list,
    "UIDL": Pop3Server._cmd_uidl,
    "RETR": Pop3Server._cmd_retr,
    "TOP": Pop3Server._cmd_top,
    "DELE": Pop3Server._cmd_dele,
    "NOOP": Pop3Server._cmd_noop,
    "RSET": Pop3Server._cmd_rset,
}
