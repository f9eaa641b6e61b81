"""What the IMAP command parser hands to the server core.

Events marked "decision" pause the parser (it buffers what arrives and parses nothing) until the
server answers with the method named; the rest are notices.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailhouse.proto.imap.commands import Arguments


@dataclass(frozen=True, slots=True)
class Command:
    """A complete command. `name` is upper case (e.g. "FETCH"); `uid` is the UID prefix. When
    `name` is "IDLE" or "AUTHENTICATE" this is a decision: answer `start_idle()` /
    `start_sasl()` when the server sends its continuation, `resume()` when it refuses the
    command or completes it at once (AUTHENTICATE with a SASL-IR initial response). "ENABLE"
    is a decision too: answer `resume()` once the enabled extensions apply (`utf8` set), so
    the commands pipelined behind it are parsed the new way."""

    tag: str
    name: str
    args: Arguments
    uid: bool = False


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """Decision: a synchronising literal of `size` octets was announced. Answer `accept_literal()`
    after writing "+ ..." or `reject_literal()` after writing the tagged NO/BAD (RFC 9051 §7.5);
    the client sends the octets only after "+". `message` is True for an APPEND message
    (streamed as AppendData), False for a literal the parser keeps."""

    tag: str
    size: int
    message: bool


@dataclass(frozen=True, slots=True)
class AppendData:
    """Notice: octets of APPEND message number `index` (0-based within the command), in order, as
    they arrive; `last` on the final piece (an empty message gives one empty last piece). The
    Append command follows once the whole command line is in; a Bad or No instead of it means:
    drop what was spooled."""

    tag: str
    index: int
    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class Bad:
    """Notice: a malformed command (tagged BAD, or untagged when `tag` is None). `code` is a
    response code without brackets ("TOOBIG", "LIMIT", "CLIENTBUG") or None. The parser goes on
    with the next command."""

    tag: str | None
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class No:
    """Notice: a well-formed command the parser refuses by policy (tagged NO): an APPEND message
    over max_append_size ([TOOBIG], RFC 9051 §7.1), a mailbox name outside the naming rules."""

    tag: str
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Fatal:
    """Notice: the input cannot be resynchronised (a non-synchronising literal beyond every
    limit). Send "* BYE" with `text` and close; the parser accepts nothing more."""

    text: str


@dataclass(frozen=True, slots=True)
class IdleDone:
    """Notice: the line that ends IDLE. `valid` is False for anything but "DONE" (RFC 9051
    §6.3.13): end IDLE with a tagged BAD then."""

    valid: bool


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """Decision: one client line of an AUTHENTICATE exchange (base64, or "*" to cancel), without
    its CRLF. Answer `start_sasl()` after the next challenge, `resume()` when it is over."""

    data: bytes


Event = (Command | ContinuationNeeded | AppendData | Bad | No | Fatal | IdleDone
         | SaslResponse)
