"""The IMAP server core: the session's states and framing, sans I/O (RFC 9051, RFC 3501).

Bytes go in (`receive_data`), events come out (`next_event`, server_events.py), replies
accumulate for `data_to_send`. The core answers by itself what needs no mailbox: CAPABILITY,
NOOP and CHECK before a mailbox is selected, LOGOUT, STARTTLS, ID, ENABLE, NAMESPACE, the IDLE
and AUTHENTICATE exchanges, literal continuations, every malformed command and every command
sent in a state where it is not valid (RFC 9051 §3, §6). The rest is a `Request` for the
service; its answer comes back as untagged lines and one `complete()`, and the core moves
between the authenticated and selected states from the outcome (RFC 9051 §6.3.2: a failed
SELECT leaves no mailbox selected).

Security rules kept here, where every session passes:
- No password before TLS unless the configuration allows it: LOGINDISABLED and no AUTH=
  capability, LOGIN/AUTHENTICATE answered NO [PRIVACYREQUIRED] (RFC 9051 §6.2.3, RFC 8314).
- STARTTLS discards every byte received before the handshake (RFC 9051 §6.2.1, CVE-2011-0411):
  the parser is replaced, whatever was pipelined after the command is gone.
- At most `max_errors` refused commands, then BYE.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from mailhouse.proto import sasl
from mailhouse.proto.imap import commands as cmd
from mailhouse.proto.imap import server_events as ev
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.events import (
    AppendData,
    Bad,
    Command,
    ContinuationNeeded,
    Event,
    Fatal,
    IdleDone,
    No,
    SaslResponse,
)
from mailhouse.proto.imap.parser import CommandParser
from mailhouse.proto.imap.responses import quoted, string


class State(Enum):
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class LoginOutcome(Enum):
    OK = "ok"
    FAILED = "failed"  # NO [AUTHENTICATIONFAILED] (RFC 5530)
    THROTTLED = "throttled"  # too many failures: NO [UNAVAILABLE], as a failure looks
    UNAVAILABLE = "unavailable"  # the server cannot check now: NO [UNAVAILABLE]


# RFC 9051 §6.1-6.4 (and the extensions' sections): where each command is valid.
ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
NOT_AUTHENTICATED_ONLY = frozenset({"STARTTLS", "AUTHENTICATE", "LOGIN"})
AUTHENTICATED = frozenset({
    "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
    "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "GETQUOTA", "GETQUOTAROOT",
    "SETQUOTA",
})
SELECTED_ONLY = frozenset({
    "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT",
    "THREAD", "CHECK", "CANCELUPDATE",
})
# ENABLE-able here (RFC 5161) when rev2 is announced; the service says which of the others it
# implements (UTF8=ACCEPT, RFC 6855, among them), and only announced ones are enabled.
CORE_ENABLE = frozenset({"IMAP4REV2"})
# Enabling either makes mailbox names and quoted strings UTF-8 (RFC 9051 §5.1, RFC 6855 §3).
UTF8_MODES = frozenset({"IMAP4REV2", "UTF8=ACCEPT"})


@dataclass(frozen=True, slots=True)
class ImapServerConfig:
    hostname: str
    # Capabilities the service implements (UIDPLUS, MOVE, CONDSTORE …), announced after login;
    # never one that does not work (the product rule: nothing announced that is not built).
    capabilities: tuple[str, ...] = ()
    # Of those, the ones ENABLE turns on (CONDSTORE, QRESYNC, RFC 5161/7162).
    enableable: tuple[str, ...] = ()
    rev2: bool = True  # announce IMAP4rev2 besides IMAP4rev1 (RFC 9051 Appendix E)
    allow_plaintext_auth: bool = False
    tls_available: bool = True  # STARTTLS can be offered (a certificate is loaded)
    auth_mechanisms: tuple[str, ...] = sasl.MECHANISMS
    max_errors: int = 20  # refused commands per session, then BYE
    delimiter: str = "/"
    id_fields: tuple[tuple[str, str], ...] = (("name", "mailhouse"),)
    parser: ParserConfig = field(default_factory=ParserConfig)


class ImapServer:
    def __init__(self, config: ImapServerConfig, *, tls_active: bool = False) -> None:
        self.config = config
        self.tls_active = tls_active
        self.state = State.NOT_AUTHENTICATED
        self.enabled: set[str] = set()
        self._parser = CommandParser(config.parser)
        self._queue: deque[Event] = deque()
        self._out = bytearray()
        self._errors = 0
        self._pending: str | None = None  # the decision being waited for
        self._tag = ""  # the command being answered
        self._name = ""
        self._sasl: sasl.Mechanism | None = None
        self._appending: set[str] = set()  # tags whose APPEND data has been streamed
        self._closed = False
        self._line(b"* OK [CAPABILITY " + self._capabilities() + b"] "
                   + config.hostname.encode("ascii", "replace") + b" IMAP ready")

    # --- the transport's side ---------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return self._parser.buffered

    @property
    def selected(self) -> bool:
        return self.state is State.SELECTED

    def receive_data(self, data: bytes) -> None:
        if not self._closed:
            self._queue.extend(self._parser.feed(data))

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def next_event(self) -> ev.ServerEvent:
        if self._closed:
            return ev.Closed()
        if self._pending is not None:
            raise RuntimeError(f"waiting for an answer to {self._pending}")
        while self._queue:
            event = self._queue.popleft()
            answer = self._handle(event)
            if answer is not None:
                return answer
            if self._closed:
                return ev.Closed()
        return ev.NeedData()

    def tls_established(self) -> None:
        self._expect("StartTls")
        self.tls_active = True

    def timeout(self) -> None:
        """The autologout timer ran out (RFC 9051 §5.4)."""
        self._bye(b"Autologout; idle for too long")

    def shutdown(self) -> bool:
        """Server stopping: BYE now unless a decision is pending (then False: ask again)."""
        if self._closed:
            return True
        if self._pending is not None and self._pending != "IdleEnded":
            return False
        self._bye(b"Server shutting down")
        return True

    # --- answers to decisions ---------------------------------------------------------------
    def login_result(self, outcome: LoginOutcome) -> None:
        self._expect("Credentials")
        if outcome is LoginOutcome.OK:
            self.state = State.AUTHENTICATED
            self._tagged(b"OK", b"Logged in", b"CAPABILITY " + self._capabilities())
            return
        self._count_error()
        if outcome is LoginOutcome.FAILED:
            self._tagged(b"NO", b"Authentication failed", b"AUTHENTICATIONFAILED")
        else:
            self._tagged(b"NO", b"Authentication temporarily unavailable", b"UNAVAILABLE")

    def untagged(self, lines: Iterable[bytes]) -> None:
        """Untagged responses (without "* " and CRLF; literals inside are fine): during a
        Request, during IDLE, or at any point the service decides RFC 9051 §7 allows."""
        if self._closed:
            return
        for line in lines:
            self._line(b"* " + line)

    def complete(self, status: str, text: str, code: str | None = None) -> None:
        """The tagged answer to a Request (or to IdleEnded)."""
        pending = self._expect_any("Request", "IdleEnded")
        if status not in ("OK", "NO", "BAD"):
            raise ValueError(status)
        if pending == "Request":
            self._transition(status)
            if status == "BAD":
                self._count_error()
        self._tagged(status.encode(), self._text(text),
                     code.encode("utf-8") if code else None)
        if self._name == "LOGOUT":
            self._close()

    # --- events from the parser ------------------------------------------------------------
    def _handle(self, event: Event) -> ev.ServerEvent | None:
        if isinstance(event, Command):
            return self._command(event)
        if isinstance(event, AppendData):
            self._appending.add(event.tag)
            return ev.AppendChunk(event.tag, event.index, event.data, event.last)
        if isinstance(event, ContinuationNeeded):
            return self._continuation(event)
        if isinstance(event, Bad):
            self._sasl = None  # an overlong SASL response ends the exchange (the parser's too)
            self._count_error()
            self._reply(event.tag, b"BAD", event.text, event.code)
            return self._aborted(event.tag)
        if isinstance(event, No):
            self._reply(event.tag, b"NO", event.text, event.code)
            return self._aborted(event.tag)
        if isinstance(event, Fatal):
            self._bye(event.text.encode("utf-8"))
            return None
        if isinstance(event, IdleDone):
            self._pending = "IdleEnded"
            if not event.valid:
                self._pending = None
                self._count_error()
                self._tagged(b"BAD", b"Expected DONE")
                return None
            return ev.IdleEnded(self._tag)
        assert isinstance(event, SaslResponse)
        return self._sasl_response(event.data)

    def _aborted(self, tag: str | None) -> ev.ServerEvent | None:
        if tag is not None and tag in self._appending:
            self._appending.discard(tag)
            return ev.AppendAborted(tag)
        return None

    def _continuation(self, event: ContinuationNeeded) -> ev.ServerEvent | None:
        if event.message and self.state not in (State.AUTHENTICATED, State.SELECTED):
            self._count_error()
            self._reply(event.tag, b"BAD", "APPEND is not valid in this state", None)
            self._queue.extend(self._parser.reject_literal())
            return None
        self._line(b"+ Ready for literal data")
        self._queue.extend(self._parser.accept_literal())
        return None

    def _command(self, command: Command) -> ev.ServerEvent | None:
        self._tag, self._name = command.tag, command.name
        self._appending.discard(command.tag)
        name = command.name
        if not self._valid_here(name):
            self._count_error()
            if name in ("IDLE", "AUTHENTICATE", "ENABLE"):
                self._queue.extend(self._parser.resume())
            self._tagged(b"BAD", name.encode() + b" is not valid in this state")
            return self._aborted(command.tag) if name == "APPEND" else None
        conflict = self._charset_conflict(command)
        if conflict is not None:
            self._count_error()
            self._tagged(b"BAD", conflict.encode())
            return None
        handler = _CORE.get(name)
        if handler is not None:
            return handler(self, command)
        self._pending = "Request"
        return ev.Request(command, self.state is State.SELECTED, frozenset(self.enabled))

    def _valid_here(self, name: str) -> bool:
        if name in ANY_STATE:
            return True
        if self.state is State.NOT_AUTHENTICATED:
            return name in NOT_AUTHENTICATED_ONLY
        if name in NOT_AUTHENTICATED_ONLY:
            return False
        if name == "ENABLE":  # RFC 5161 §3.1: only before a mailbox is selected
            return self.state is State.AUTHENTICATED
        return name in AUTHENTICATED or (self.state is State.SELECTED and name in SELECTED_ONLY)

    def _charset_conflict(self, command: Command) -> str | None:
        """RFC 6855 §3 (and its verified erratum 4029): once UTF8=ACCEPT is enabled, strings
        are UTF-8, so a SEARCH naming a charset, or a SORT/THREAD naming one other than UTF-8,
        carries conflicting labels: BAD. IMAP4rev2 keeps SEARCH's CHARSET (RFC 9051 §6.4.4),
        so a session that enabled it is left to the rev2 rules."""
        if "UTF8=ACCEPT" not in self.enabled or "IMAP4REV2" in self.enabled:
            return None
        args = command.args
        if isinstance(args, cmd.Search) and args.charset is not None:
            return "No CHARSET in SEARCH once UTF8=ACCEPT is enabled"
        if isinstance(args, cmd.Sort | cmd.Thread) and args.charset != "UTF-8":
            return f"{command.name} takes only UTF-8 once UTF8=ACCEPT is enabled"
        return None

    # --- commands the core answers -----------------------------------------------------------
    def _capability(self, command: Command) -> None:
        self._line(b"* CAPABILITY " + self._capabilities())
        self._tagged(b"OK", b"Capability completed")

    def _noop(self, command: Command) -> ev.ServerEvent | None:
        if self.state is State.NOT_AUTHENTICATED:
            self._tagged(b"OK", b"NOOP completed")
            return None
        self._pending = "Request"  # the service reports mailbox changes (RFC 9051 §6.1.2)
        return ev.Request(command, self.state is State.SELECTED, frozenset(self.enabled))

    def _logout(self, command: Command) -> None:
        self._line(b"* BYE Logging out")
        self._tagged(b"OK", b"Logout completed")
        self._close()

    def _id(self, command: Command) -> None:
        fields: list[bytes] = []
        for key, value in self.config.id_fields:
            fields += [quoted(key), string(value)]
        self._line(b"* ID (" + b" ".join(fields) + b")" if fields else b"* ID NIL")
        self._tagged(b"OK", b"ID completed")

    def _namespace(self, command: Command) -> None:
        # RFC 2342 / RFC 9051 §6.3.10: one personal namespace, no shared or other users' ones.
        self._line(b'* NAMESPACE (("" ' + quoted(self.config.delimiter) + b")) NIL NIL")
        self._tagged(b"OK", b"Namespace completed")

    def _enable(self, command: Command) -> None:
        args = command.args
        assert isinstance(args, cmd.Enable)
        # RFC 5161 §3.1: what the server does not announce is not enabled (nor listed).
        announced = {c.upper() for c in self.config.capabilities}
        allowed = {c.upper() for c in self.config.enableable} & announced
        if self.config.rev2:
            allowed |= CORE_ENABLE
        newly = [c for c in args.capabilities if c in allowed and c not in self.enabled]
        self.enabled.update(newly)
        if self.enabled & UTF8_MODES:
            self._parser.utf8 = True  # mailbox names are UTF-8 from here on (RFC 9051 §5.1)
        # RFC 6855 §4: APPEND's UTF8 data item exists only for UTF8=ACCEPT sessions.
        self._parser.utf8_append = "UTF8=ACCEPT" in self.enabled
        self._queue.extend(self._parser.resume())  # the parser waited for this (events.py)
        # RFC 5161 §3.1: only what this command newly enabled.
        self._line(b"* ENABLED" + b"".join(b" " + c.encode() for c in newly))
        self._tagged(b"OK", b"Enabled")

    def _starttls(self, command: Command) -> ev.ServerEvent | None:
        if self.tls_active or not self.config.tls_available:
            self._count_error()
            self._tagged(b"BAD", b"TLS is not available" if not self.tls_active
                         else b"TLS is already active")
            return None
        self._tagged(b"OK", b"Begin TLS negotiation now")
        # Whatever the client pipelined after STARTTLS is dropped with the old parser.
        self._parser = CommandParser(self.config.parser)
        self._queue.clear()
        self._pending = "StartTls"
        return ev.StartTls()

    def _login(self, command: Command) -> ev.ServerEvent | None:
        args = command.args
        assert isinstance(args, cmd.Login)
        if not self._login_allowed():
            self._privacy_required()
            return None
        self._pending = "Credentials"
        return ev.Credentials(command.tag, "LOGIN", args.username, args.password)

    def _authenticate(self, command: Command) -> ev.ServerEvent | None:
        args = command.args
        assert isinstance(args, cmd.Authenticate)
        if not self._login_allowed():
            self._queue.extend(self._parser.resume())
            self._privacy_required()
            return None
        try:
            mechanism = sasl.new_mechanism(args.mechanism.upper(), self.config.auth_mechanisms)
            # SASL-IR (RFC 4959): the initial response in wire form; the mechanism decodes it.
            return self._sasl_step(mechanism, mechanism.start(args.initial))
        except sasl.SaslError as exc:
            self._queue.extend(self._parser.resume())
            self._sasl_failed(exc)
            return None

    def _sasl_response(self, data: bytes) -> ev.ServerEvent | None:
        mechanism = self._sasl
        assert mechanism is not None
        try:
            return self._sasl_step(mechanism, mechanism.step(data))
        except sasl.SaslError as exc:
            self._sasl = None
            self._queue.extend(self._parser.resume())
            self._sasl_failed(exc)
            return None

    def _sasl_step(self, mechanism: sasl.Mechanism, step: sasl.Step) -> ev.ServerEvent | None:
        if isinstance(step, sasl.Challenge):
            self._sasl = mechanism
            self._line(b"+ " + step.encoded().encode("ascii"))
            self._queue.extend(self._parser.start_sasl())
            return None
        self._sasl = None
        self._queue.extend(self._parser.resume())
        self._pending = "Credentials"
        return ev.Credentials(self._tag, step.mechanism, step.username, step.password,
                              step.authzid)

    def _sasl_failed(self, exc: sasl.SaslError) -> None:
        # RFC 9051 §6.2.2: NO for a failure or an unknown mechanism, BAD for a cancelled
        # exchange or a malformed response.
        self._count_error()
        if exc.kind is sasl.SaslErrorKind.UNSUPPORTED:
            self._tagged(b"NO", b"Unsupported authentication mechanism", b"CANNOT")
        elif exc.kind is sasl.SaslErrorKind.CANCELLED:
            self._tagged(b"BAD", b"Authentication cancelled")
        elif exc.kind is sasl.SaslErrorKind.BAD_BASE64:
            self._tagged(b"BAD", b"Invalid base64 in authentication response")
        else:
            self._tagged(b"NO", b"Authentication failed", b"AUTHENTICATIONFAILED")

    def _idle(self, command: Command) -> ev.ServerEvent:
        self._line(b"+ idling")
        self._queue.extend(self._parser.start_idle())
        return ev.IdleStarted(command.tag)

    # --- helpers -----------------------------------------------------------------------------
    def _login_allowed(self) -> bool:
        return self.tls_active or self.config.allow_plaintext_auth

    def _privacy_required(self) -> None:
        self._count_error()
        self._tagged(b"NO", b"Plaintext authentication is not allowed without TLS",
                     b"PRIVACYREQUIRED")

    def _capabilities(self) -> bytes:
        caps = ["IMAP4rev1"] + (["IMAP4rev2"] if self.config.rev2 else [])
        caps += ["LITERAL+" if self.config.parser.literal_plus else "LITERAL-",
                 "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE"]
        if self.state is State.NOT_AUTHENTICATED:
            if not self.tls_active and self.config.tls_available:
                caps.append("STARTTLS")
            if self._login_allowed():
                caps += [f"AUTH={m}" for m in self.config.auth_mechanisms]
            else:
                caps.append("LOGINDISABLED")
        else:
            caps += [c for c in self.config.capabilities if c not in caps]
        return " ".join(caps).encode("ascii")

    def _transition(self, status: str) -> None:
        name = self._name
        if name in ("SELECT", "EXAMINE"):
            self.state = State.SELECTED if status == "OK" else State.AUTHENTICATED
        elif name in ("CLOSE", "UNSELECT") and status == "OK":
            self.state = State.AUTHENTICATED

    def _expect(self, decision: str) -> None:
        if self._pending != decision:
            raise RuntimeError(f"not waiting for {decision} (waiting for {self._pending})")
        self._pending = None

    def _expect_any(self, *decisions: str) -> str:
        pending = self._pending
        if pending not in decisions:
            raise RuntimeError(f"not waiting for {decisions} (waiting for {pending})")
        self._pending = None
        return pending

    def _text(self, text: str) -> bytes:
        """resp-text: TEXT-CHAR is 7-bit in IMAP4rev1 (RFC 3501 §9); UTF-8 only for a session
        that enabled it (RFC 9051 §9 text). A name the service echoes stays readable."""
        if self.enabled & UTF8_MODES:
            return text.encode("utf-8")
        return text.encode("ascii", "backslashreplace")

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.config.max_errors:
            self._bye(b"Too many invalid commands")

    def _line(self, data: bytes) -> None:
        if not self._closed:
            self._out += data + b"\r\n"

    def _tagged(self, status: bytes, text: bytes, code: bytes | None = None) -> None:
        self._line(self._tag.encode("ascii") + b" " + status + b" "
                   + (b"[" + code + b"] " if code else b"") + text)

    def _reply(self, tag: str | None, status: bytes, text: str, code: str | None) -> None:
        prefix = tag.encode("ascii") if tag is not None else b"*"
        self._line(prefix + b" " + status + b" "
                   + (b"[" + code.encode() + b"] " if code else b"") + self._text(text))

    def _bye(self, text: bytes) -> None:
        self._line(b"* BYE " + text)
        self._close()

    def _close(self) -> None:
        self.state = State.LOGOUT
        self._closed = True
        self._pending = None
        self._queue.clear()


_CORE: dict[str, Callable[[ImapServer, Command], ev.ServerEvent | None]] = {
    "CAPABILITY": ImapServer._capability,
    "NOOP": ImapServer._noop,
    "LOGOUT": ImapServer._logout,
    "ID": ImapServer._id,
    "NAMESPACE": ImapServer._namespace,
    "ENABLE": ImapServer._enable,
    "STARTTLS": ImapServer._starttls,
    "LOGIN": ImapServer._login,
    "AUTHENTICATE": ImapServer._authenticate,
    "IDLE": ImapServer._idle,
}
