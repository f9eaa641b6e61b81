"""The incremental IMAP command parser: bytes in, events (events.py) out. Sans-I/O.

A command is gathered as text lines and literals (lexer.Part) and parsed whole once its last
line is in (grammar.py): IMAP commands are small apart from their literals, and parsing at the
end keeps the grammar a plain recursive descent. What cannot wait for the end is decided as each
literal header "{n}" / "{n+}" / "~{n}" arrives (RFC 9051 §4.3, RFC 7888, RFC 3516):

- the tag and command name must already be valid, and an APPEND must be valid up to its message
  literal, so a broken or refused command is answered before the client sends the octets;
- the size is checked against the limits (config.py): a synchronising literal over a limit is
  refused at once (tagged BAD [TOOBIG], or NO [TOOBIG] for an APPEND message) and the
  client never sends it; a non-synchronising one is read and dropped (no octet kept) and the
  command answered at its end, or, beyond max_append_size, ends the session (Fatal): the
  client will send the octets whatever we answer, and skipping gigabytes is not worth it;
- APPEND message octets are passed on as they arrive (AppendData), never held here, so the
  server can spool them to disk.

A malformed command is answered when the command ends, and that end is found honouring every
literal (their octets are skipped, never parsed as commands): resynchronisation happens at a
line boundary outside literals only. Literal octets are taken from the InputBuffer in one copy
once all have arrived (or in the arrival-sized chunks of an APPEND message).
"""

from __future__ import annotations

import re
from enum import Enum

from mailhouse.proto.imap import grammar
from mailhouse.proto.imap.config import LITERAL_MINUS_MAX, ParserConfig
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
from mailhouse.proto.imap.lexer import (
    PENDING,
    Literal,
    MessageRef,
    ParseError,
    Part,
    PolicyError,
    Reader,
)
from mailhouse.proto.input_buffer import InputBuffer

_LITERAL_HEADER = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
_TAG_PREFIX = re.compile(rb'([^(){ \x00-\x1f\x7f-\xff%*"\\+]+)(?: |\Z)')
_TAIL = 32  # octets of a skipped overlong line kept to see whether it ends in a literal header
# Longer "tags" are not echoed: the answer is an untagged BAD. Real tags are a few octets; the
# bound also makes the answer to an overlong line the same however the line arrived (whole, or
# cut so that only its first 256 octets are looked at). Found by fuzz/imap_server.py.
TAG_MAX = 64


class Mode(Enum):
    COMMANDS = "commands"
    IDLE = "idle"  # lines are DONE (RFC 9051 §6.3.13)
    SASL = "sasl"  # lines are SASL responses (RFC 9051 §6.2.2)


class _State(Enum):
    LINE = "line"
    SKIP_LINE = "skip_line"  # an overlong line: dropping octets up to its LF
    LITERAL = "literal"  # a literal kept in memory
    MESSAGE = "message"  # an APPEND message, streamed out
    SKIP_LITERAL = "skip_literal"  # a literal of a doomed command, dropped
    CLOSED = "closed"


class _Wait(Enum):
    NONE = "none"
    LITERAL = "literal"  # accept_literal() / reject_literal()
    MODE = "mode"  # start_idle() / start_sasl() / resume()


class CommandParser:
    """One per connection. `utf8` is set by the server once the client enabled IMAP4rev2 or
    UTF8=ACCEPT (mailbox names are UTF-8 then, not modified UTF-7); `utf8_append` once it
    enabled UTF8=ACCEPT (APPEND's UTF8 data item, RFC 6855 §4)."""

    def __init__(self, config: ParserConfig | None = None) -> None:
        self.config = config or ParserConfig()
        self.utf8 = False
        self.utf8_append = False
        self._buf = InputBuffer()
        self._state = _State.LINE
        self._mode = Mode.COMMANDS
        self._wait = _Wait.NONE
        self._mode_tag = ""  # the IDLE or AUTHENTICATE being served
        self._reset()

    def _reset(self) -> None:
        self._parts: list[Part] = []
        self._tag: str | None = None
        self._name = ""
        self._text_total = 0
        self._literal_total = 0
        self._messages = 0
        self._doomed: Bad | No | None = None
        self._remaining = 0
        self._literal_binary = False
        self._literal_size = 0
        self._tail = b""

    # -- the server's side ---------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """A decision is pending: input is buffered, not parsed (the transport may stop reading)."""
        return self._wait is not _Wait.NONE

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        if self._state is _State.CLOSED:
            return []
        self._buf.feed(data)
        return self._run()

    def accept_literal(self) -> list[Event]:
        self._expect_wait(_Wait.LITERAL)
        return self._run()

    def reject_literal(self) -> list[Event]:
        """The server answered the literal's command itself (tagged NO/BAD): forget it."""
        self._expect_wait(_Wait.LITERAL)
        self._state = _State.LINE
        self._reset()
        return self._run()

    def start_idle(self) -> list[Event]:
        self._expect_wait(_Wait.MODE)
        self._mode = Mode.IDLE
        return self._run()

    def start_sasl(self) -> list[Event]:
        self._expect_wait(_Wait.MODE)
        self._mode = Mode.SASL
        return self._run()

    def resume(self) -> list[Event]:
        """Back to commands (IDLE or AUTHENTICATE refused, the SASL exchange over, or ENABLE
        applied)."""
        self._expect_wait(_Wait.MODE)
        self._mode = Mode.COMMANDS
        return self._run()

    def _expect_wait(self, wait: _Wait) -> None:
        if self._wait is not wait:
            raise RuntimeError(f"the parser is not waiting for that ({self._wait.value})")
        self._wait = _Wait.NONE

    # -- the machine ---------------------------------------------------------------------------

    def _run(self) -> list[Event]:
        out: list[Event] = []
        buf = self._buf
        while self._wait is _Wait.NONE and self._state is not _State.CLOSED:
            state = self._state
            if state is _State.LINE or state is _State.SKIP_LINE:
                at = buf.find_lf()
                if at < 0:
                    self._unfinished_line(out)
                    break
                line = buf.take(at + 1)
                if state is _State.SKIP_LINE:
                    line, self._state = (self._tail + line)[-_TAIL:], _State.LINE
                    self._tail = b""
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                self._line(line, out, overlong=state is _State.SKIP_LINE)
            elif state is _State.LITERAL:
                if len(buf) < self._remaining:
                    break
                self._parts.append(Literal(buf.take(self._remaining), self._literal_binary))
                self._state = _State.LINE
            elif state is _State.MESSAGE:
                size = min(len(buf), self._remaining)
                if size == 0 and self._remaining:
                    break
                self._remaining -= size
                last = self._remaining == 0
                assert self._tag is not None
                out.append(AppendData(self._tag, self._messages, buf.take(size), last))
                if last:
                    self._parts.append(MessageRef(self._messages, self._literal_size,
                                                  self._literal_binary))
                    self._messages += 1
                    self._state = _State.LINE
            else:  # SKIP_LITERAL
                size = min(len(buf), self._remaining)
                buf.skip(size)
                self._remaining -= size
                if self._remaining:
                    break
                self._parts.append(Literal(b""))
                self._state = _State.LINE
        return out

    def _unfinished_line(self, out: list[Event]) -> None:
        """No LF yet: bound what is held. Past the limit the line is dropped as it arrives
        (keeping a short tail) and the command is doomed."""
        limit = self.config.max_line_length
        if self._state is _State.LINE and self._text_total + len(self._buf) <= limit:
            return
        if self._state is _State.LINE:
            self._state = _State.SKIP_LINE
            if not self._parts and self._mode is Mode.COMMANDS:
                self._tag = _tag_of(self._buf.peek(256))
        self._tail = (self._tail + self._buf.take(len(self._buf)))[-_TAIL:]

    def _line(self, line: bytes, out: list[Event], *, overlong: bool) -> None:
        if self._mode is not Mode.COMMANDS:
            overlong = overlong or len(line) > self.config.max_line_length
            self._mode_line(line, out, overlong=overlong)
            return
        if not self._parts and not line and not overlong:
            return  # an empty line between commands: nothing to answer
        self._text_total += len(line)
        if self._tag is None and not self._parts and not overlong:
            self._tag = _tag_of(line)
        if overlong or self._text_total > self.config.max_line_length:
            self._doom(Bad(self._tag, "Command line too long", "TOOBIG"))
        header = _literal_header(line)
        if header is None:
            self._parts.append(line)
            self._finish(out)
            return
        self._parts.append(line[: header.start()])
        self._literal_header(header, out)

    def _mode_line(self, line: bytes, out: list[Event], *, overlong: bool) -> None:
        if self._mode is Mode.IDLE:
            out.append(IdleDone(not overlong and line.upper() == b"DONE"))
            self._mode = Mode.COMMANDS
        elif overlong:
            out.append(Bad(self._mode_tag, "SASL response too long", "TOOBIG"))
            self._mode = Mode.COMMANDS
        else:
            out.append(SaslResponse(line))
            self._wait = _Wait.MODE

    def _doom(self, result: Bad | No) -> None:
        if self._doomed is None:
            self._doomed = result

    def _literal_header(self, header: re.Match[bytes], out: list[Event]) -> None:
        binary = header.group(1) == b"~"
        digits = header.group(2)
        size = int(digits) if len(digits.lstrip(b"0")) <= 20 else 1 << 70  # no bignum work
        sync = header.group(3) != b"+"
        config = self.config
        message = False
        if self._doomed is None:
            try:
                if len(self._parts) == 1:
                    reader = Reader([self._parts[0]])
                    tag, self._name, _ = grammar.head(reader)
                    self._tag = tag
                    mailbox_first = reader.rest() == b" "  # "tag APPEND {n}": the mailbox
                    message = self._name == "APPEND" and not mailbox_first
                else:
                    message = self._name == "APPEND"
                if binary and not message:
                    raise ParseError("literal8 is for message data only")  # RFC 3516 §4
                if message:
                    needs_literal8 = grammar.check_append_prefix(
                        [*self._parts, PENDING], config, utf8=self.utf8,
                        utf8_append=self.utf8_append)
                    if needs_literal8 and not binary:
                        raise ParseError("UTF8 takes a literal8 (~{n})")  # RFC 6855 §4
            except ParseError as exc:
                self._doom(Bad(self._tag, exc.text, exc.code))
            except PolicyError as exc:
                self._doom(No(self._tag or "", exc.text, exc.code))
        if self._doomed is None:
            if message and size > config.max_append_size:
                self._doom(No(self._tag or "", "Message too large", "TOOBIG"))
            elif not message and self._literal_total + size > config.max_literal_size:
                self._doom(Bad(self._tag, "Literal too large", "TOOBIG"))
            elif not sync and not config.literal_plus and size > LITERAL_MINUS_MAX:
                self._doom(Bad(self._tag, "Non-synchronising literal over 4096 octets",
                               "TOOBIG"))  # RFC 7888 §5
        if self._doomed is not None:
            if sync:  # refused before the client sends it: the command ends here
                self._finish(out)
            elif size > config.max_append_size:
                out.append(Fatal("Literal too large to skip"))
                self._state = _State.CLOSED
            else:
                self._remaining, self._state = size, _State.SKIP_LITERAL
            return
        assert self._tag is not None
        self._remaining, self._literal_size, self._literal_binary = size, size, binary
        if message:
            self._state = _State.MESSAGE
        else:
            self._literal_total += size
            self._state = _State.LITERAL
        if sync:
            out.append(ContinuationNeeded(self._tag, size, message))
            self._wait = _Wait.LITERAL

    def _finish(self, out: list[Event]) -> None:
        """The command's last line is in (or it was refused at a literal header)."""
        if self._doomed is not None:
            out.append(self._doomed)
        else:
            try:
                parsed = grammar.parse(self._parts, self.config, utf8=self.utf8,
                                       utf8_append=self.utf8_append)
            except ParseError as exc:
                out.append(Bad(self._tag, exc.text, exc.code))
            except PolicyError as exc:
                out.append(No(self._tag or "", exc.text, exc.code))
            else:
                out.append(Command(parsed.tag, parsed.name, parsed.args, parsed.uid))
                if parsed.name in ("IDLE", "AUTHENTICATE"):
                    self._mode_tag = parsed.tag
                    self._wait = _Wait.MODE
                elif parsed.name == "ENABLE":
                    # ENABLE IMAP4rev2 / UTF8=ACCEPT changes how the next commands' mailbox
                    # names decode: nothing after it is parsed until the server has applied it
                    # and calls resume() (found by fuzz/imap_server.py: pipelined commands were
                    # decoded the old way).
                    self._wait = _Wait.MODE
        self._state = _State.LINE
        self._reset()


def _literal_header(line: bytes) -> re.Match[bytes] | None:
    """The "{n}" / "{n+}" / "~{n}" ending `line`, found from its last "{" (linear in the line,
    however many braces and digits it holds)."""
    if not line.endswith(b"}"):
        return None
    at = line.rfind(b"{")
    if at < 0:
        return None
    return _LITERAL_HEADER.match(line, at - 1 if at and line[at - 1] == 0x7E else at)


def _tag_of(line: bytes) -> str | None:
    m = _TAG_PREFIX.match(line[: TAG_MAX + 1])
    if m is None or len(m.group(1)) > TAG_MAX:
        return None
    return m.group(1).decode("ascii")
