"""Delivery status notifications (RFC 3464): the bounce a sender gets when mail fails or waits.

A DSN is read by two audiences, so it says everything twice (RFC 3462/6522 multipart/report):
1. text/plain for the person: which recipients failed and what the other side said;
2. message/delivery-status for software: one per-message block, one block per recipient;
3. text/rfc822-headers: the original's header section only. Returning the body would send a
   copy of possibly large or sensitive content back across the Internet for little gain, and
   is what backscatter abuses; the headers are enough to recognise the message (RFC 3464
   §2 allows either). They are capped at MAX_RETURNED_HEADERS, cut at a field boundary.

The result is always 7-bit clean apart from the To field of a non-ASCII sender (which only
SMTPUTF8 can carry anyway), CRLF-only, with every line at most 998 octets (RFC 5322 §2.1.1),
whatever the original looked like: non-ASCII, bare CR, NUL, or over-long lines in the returned
headers switch that part to quoted-printable; non-ASCII recipients use the RFC 6533 "utf-8"
address type in its 7-bit utf-8-addr-xtext form, so the report stays plain message/delivery-
status (which every client, and Python's email package, understands) rather than RFC 6533's
message/global-delivery-status, and can travel through relays without SMTPUTF8.

Built by hand rather than with email.message: the structure is fixed and small, and writing
the bytes directly is the simplest way to guarantee the line-ending and line-length rules above
(email's generators re-fold and re-encode on their own terms). The tests parse the output with
`email.message_from_bytes(..., policy=email.policy.default)`.

Pure: no I/O, no clock (`now` and `arrival` come in), randomness only in the MIME boundary and
Message-ID.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import re
import secrets
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final

from mailhouse.queue.contracts import FailedRecipient

CRLF: Final = b"\r\n"
# RFC 5322 §2.1.1: lines MUST be at most 998 characters, SHOULD be at most 78.
MAX_LINE: Final = 998
FOLD_WIDTH: Final = 78
TEXT_WIDTH: Final = 72
# How much of the original header section is returned (RFC 3464 §2: "headers only" return).
# Real header sections with Received, ARC and DKIM fields run 5-15 KiB; 32 KiB keeps them
# whole and bounds what a hostile original can make us send.
MAX_RETURNED_HEADERS: Final = 32 * 1024
# Longest address or diagnostic we copy into a field: anything longer is not an SMTP value.
MAX_VALUE: Final = 900
MAX_SUBJECT_SHOWN: Final = 200

SUBJECT_FAILED: Final = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED: Final = "Delayed Mail (still being retried)"
# RFC 3464 §2.3.3 action values.
ACTIONS: Final = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_STATUS_RE: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_DIAGNOSTIC_TYPE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*;")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?\Z|\[[0-9A-Fa-f.:]+\]\Z"
                             r"|\[IPv6:[0-9A-Fa-f.:]+\]\Z")
_REMOTE_RE: Final = re.compile(r"(\S+)(?: \[[^\]\s]*\])?")
_MESSAGE_ID_RE: Final = re.compile(rb"<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>")
_LINE_SPLIT: Final = re.compile(rb"\r\n|\n")

# RFC 3463 §3: plain words for the most common enhanced codes; the class words otherwise.
_STATUS_WORDS: Final = {
    "1.1": "the mailbox does not exist",
    "1.2": "the destination domain does not exist or does not accept mail",
    "1.3": "the destination address is not valid",
    "1.10": "the destination domain does not accept mail (null MX)",
    "2.1": "the mailbox is disabled",
    "2.2": "the mailbox is full",
    "2.3": "the message is larger than the mailbox accepts",
    "3.4": "the message is too big for the receiving system",
    "4.1": "the receiving server did not answer",
    "4.2": "the connection to the receiving server was lost",
    "4.3": "the destination could not be looked up in the DNS",
    "4.4": "no route to the destination was found",
    "4.6": "the message was looping",
    "4.7": "the message could not be delivered within the allowed time",
    "5.0": "the receiving server refused the message",
    "6.0": "the message content was refused",
    "6.7": "the receiving server cannot handle non-ASCII addresses",
    "7.0": "the message was refused for policy reasons",
    "7.1": "the receiving server refused the message",
    "7.26": "the message failed authentication checks at the receiving server",
}


def build_dsn(*, reporting_mta: str, original_sender: str, recipients: Sequence[FailedRecipient],
              original: bytes, arrival: float, now: float, queue_id: int,
              delayed: bool = False) -> bytes:
    """A complete RFC 5322 message reporting `recipients` to `original_sender`.

    `original` is the queued message, or just its beginning: only the header section is used
    (all of it when there is no blank line). `delayed` makes it a warning (RFC 3464 §2.3.3
    "delayed") instead of a failure report. The caller sends it with the null reverse-path
    (RFC 5321 §4.5.5) and never for a message whose own sender was null."""
    if not recipients:
        raise ValueError("a delivery status notification needs at least one recipient")
    host = _ascii(reporting_mta)
    header_lines, truncated = original_header_section(original)
    subject = _original_subject(header_lines)
    in_reply_to = _original_message_id(header_lines)
    human = _human_text(host, recipients, subject=subject, arrival=arrival, delayed=delayed,
                        truncated=truncated)
    report = _delivery_status(host, recipients, arrival=arrival, now=now, queue_id=queue_id,
                              delayed=delayed)
    kind = "delayed" if delayed else "undelivered"
    parts = [
        _text_part(human, "Notification"),
        [b"Content-Type: message/delivery-status", b"Content-Description: Delivery report",
         b"", report],
        _headers_part(header_lines, f"Headers of the {kind} message"),
    ]
    boundary = _boundary([CRLF.join(part) for part in parts])
    token = secrets.token_hex(6)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>".encode("ascii"),
        b"To: <" + _strip_controls(original_sender).encode("utf-8") + b">",
        f"Subject: {SUBJECT_DELAYED if delayed else SUBJECT_FAILED}".encode("ascii"),
        b"Date: " + _date(now),
        f"Message-ID: <dsn.{queue_id}.{int(now)}.{token}@{host}>".encode("ascii"),
    ]
    if in_reply_to is not None:
        # Threads the report under the sent message in the sender's client.
        head += [b"In-Reply-To: " + in_reply_to, b"References: " + in_reply_to]
    head += [
        b"Auto-Submitted: auto-replied",  # RFC 3834 §5: no auto-responder answers it
        b"MIME-Version: 1.0",
        b"Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"'.encode("ascii"),
    ]
    out = [*head, b"", b"This is a MIME-encapsulated message.", b""]
    for part in parts:
        out += [b"--" + boundary.encode("ascii"), *part]
    out += [b"--" + boundary.encode("ascii") + b"--", b""]
    return CRLF.join(out)


# --- the original's header section ------------------------------------------------------------

def original_header_section(original: bytes,
                            limit: int = MAX_RETURNED_HEADERS) -> tuple[list[bytes], bool]:
    """The lines of the original's header section (up to the first empty line, or all lines
    when there is none), whole fields only, at most `limit` octets; and whether any was
    left out. Line endings are dropped: the caller joins with CRLF."""
    lines: list[bytes] = []
    field: list[bytes] = []
    size = 0
    truncated = False

    def flush() -> bool:
        nonlocal size
        field_size = sum(len(line) + 2 for line in field)
        if size + field_size > limit:
            return False
        lines.extend(field)
        size += field_size
        return True

    pieces = _LINE_SPLIT.split(original)
    if pieces and pieces[-1] == b"":
        pieces.pop()  # the terminator of the last line, not an empty line
    for line in pieces:
        if line == b"":
            break  # RFC 5322 §2.1: the empty line ends the header section
        if line[:1] in (b" ", b"\t"):
            if field:
                field.append(line)
            continue  # a continuation of nothing: not a header line
        if field and not flush():
            truncated = True
            field = []
            break
        field = [line]
    if field and not flush():
        truncated = True
    return lines, truncated


def _original_subject(header_lines: list[bytes]) -> str | None:
    """The Subject as the sender wrote it, RFC 2047 decoded, for the human-readable part."""
    if not header_lines:
        return None
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            CRLF.join(header_lines) + CRLF + CRLF)
        value = parsed.get("subject")
    except Exception:  # a hostile header must not stop the bounce
        return None
    if value is None:
        return None
    text = " ".join(_strip_controls(str(value)).split())
    if len(text) > MAX_SUBJECT_SHOWN:
        text = text[: MAX_SUBJECT_SHOWN - 3] + "..."
    return text


def _original_message_id(header_lines: list[bytes]) -> bytes | None:
    for i, line in enumerate(header_lines):
        if line[:11].lower() == b"message-id:":
            value = line[11:]
            for cont in header_lines[i + 1 :]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value += cont
            match = _MESSAGE_ID_RE.search(value)
            return match.group(0) if match else None
    return None


# --- parts ------------------------------------------------------------------------------------

def _human_text(host: str, recipients: Sequence[FailedRecipient], *, subject: str | None,
                arrival: float, delayed: bool, truncated: bool) -> bytes:
    if delayed:
        intro = ("Your message has not been delivered yet to the recipients listed below. "
                 "The mail system keeps trying; you do not need to send it again. You will "
                 "be told if it cannot be delivered in the end.")
    else:
        intro = ("Your message could not be delivered to the recipients listed below. This "
                 "is a permanent failure: the mail system has stopped trying.")
    paragraphs = [f"This is the mail system at {host}.", intro]
    about = []
    if subject:
        about.append(f"Subject: {subject}")
    about.append(f"Sent: {_date(arrival).decode('ascii')}")
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += [*textwrap.wrap(paragraph, TEXT_WIDTH), ""]
    lines += [*about, ""]
    for rcpt in recipients:
        lines += textwrap.wrap(f"<{_strip_controls(rcpt.address)}>: {_reason(rcpt)}",
                               TEXT_WIDTH, subsequent_indent="    ", break_long_words=True,
                               break_on_hyphens=False)
    lines.append("")
    lines.append("The headers of your message are attached"
                 + (" (shortened: they were very long)." if truncated else "."))
    return "\r\n".join(lines).encode("utf-8")


def _reason(rcpt: FailedRecipient) -> str:
    """What went wrong, in one sentence built from what we know."""
    said = None
    if rcpt.diagnostic:
        text = " ".join(_strip_controls(rcpt.diagnostic).split())
        kind, sep, rest = text.partition(";")
        said = rest.strip() if sep and _DIAGNOSTIC_TYPE_RE.match(kind + ";") else text
    remote = _strip_controls(rcpt.remote_mta) if rcpt.remote_mta else None
    if said and remote:
        return f"host {remote} said: {said}"
    if said:
        return said
    status = _status(rcpt, delayed=rcpt.action == "delayed")
    return f"{_STATUS_WORDS.get(status.split('.', 1)[1], 'delivery failed')} ({status})"


def _delivery_status(host: str, recipients: Sequence[FailedRecipient], *, arrival: float,
                     now: float, queue_id: int, delayed: bool) -> bytes:
    """The message/delivery-status body: RFC 3464 §2.2 per-message fields, an empty line, and
    §2.3 per-recipient fields for each recipient, blocks separated by empty lines."""
    blocks = [[
        f"Reporting-MTA: dns; {host}".encode("ascii"),
        f"X-Mailhouse-Queue-ID: {queue_id}".encode("ascii"),  # an RFC 3464 extension-field
        b"Arrival-Date: " + _date(arrival),
    ]]
    for rcpt in recipients:
        block = [
            _field("Final-Recipient", _typed_address(rcpt.address)),
            _field("Action", rcpt.action if rcpt.action in ACTIONS else (
                "delayed" if delayed else "failed")),
            _field("Status", _status(rcpt, delayed=delayed)),
        ]
        remote = _remote_mta(rcpt.remote_mta)
        if remote is not None:
            block.append(_field("Remote-MTA", f"dns; {remote}"))
        if rcpt.diagnostic:
            block.append(_field("Diagnostic-Code", _diagnostic(rcpt.diagnostic)))
        block.append(b"Last-Attempt-Date: " + _date(now))
        blocks.append(block)
    return (CRLF + CRLF).join(CRLF.join(block) for block in blocks) + CRLF


def _text_part(body: bytes, description: str) -> list[bytes]:
    cte, encoded = _transfer_encode(body)
    return [b"Content-Type: text/plain; charset=utf-8",
            f"Content-Description: {description}".encode("ascii"),
            b"Content-Transfer-Encoding: " + cte, b"", encoded]


def _headers_part(header_lines: list[bytes], description: str) -> list[bytes]:
    """RFC 6522 text/rfc822-headers. Being text/*, it may be quoted-printable (message/* may
    not, RFC 2046 §5.2.1), which is how 8-bit or over-long original headers stay intact but
    7-bit safe."""
    body = CRLF.join(header_lines) + CRLF if header_lines else b""
    cte, encoded = _transfer_encode(body)
    content_type = b"Content-Type: text/rfc822-headers"
    if cte != b"7bit":
        try:
            body.decode("utf-8")
            content_type += b"; charset=utf-8"
        except UnicodeDecodeError:
            content_type += b"; charset=unknown-8bit"  # RFC 1428
    return [content_type, f"Content-Description: {description}".encode("ascii"),
            b"Content-Transfer-Encoding: " + cte, b"", encoded]


def _transfer_encode(body: bytes) -> tuple[bytes, bytes]:
    """7bit when every line is printable ASCII (or tab) within MAX_LINE, quoted-printable
    otherwise; CRLF line endings either way, a final line break kept if the body had one."""
    lines = _LINE_SPLIT.split(body)
    if len(lines) > 1 and lines[-1] == b"":
        lines.pop()
        end = CRLF
    else:
        end = b""
    if all(len(line) <= MAX_LINE and _is_printable_ascii(line) for line in lines):
        return b"7bit", CRLF.join(lines) + end
    # Line by line, so a bare CR inside a line is encoded (=0D) rather than taken for a line
    # break; binascii soft-wraps at 76 columns with "=\n" (RFC 2045 §6.7).
    encoded = [binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
               for line in lines]
    return b"quoted-printable", CRLF.join(b"\n".join(encoded).split(b"\n")) + end


def _is_printable_ascii(line: bytes) -> bool:
    return all(32 <= c < 127 or c == 9 for c in line)


# --- field values -----------------------------------------------------------------------------

def _typed_address(address: str) -> str:
    """RFC 3464 §2.3.2 address type: rfc822 for ASCII, RFC 6533 §3 utf-8 otherwise, in the
    7-bit utf-8-addr-xtext form: printable ASCII except '\\', '+' and '=' as is, everything
    else as \\x{HEXPOINT}."""
    address = _strip_controls(address).strip()
    if address.isascii() and all(33 <= ord(c) < 127 for c in address):
        return f"rfc822; {address[:MAX_VALUE]}"
    out = []
    size = 0
    for c in address:
        piece = c if (33 <= ord(c) < 127 and c not in "\\+=") else f"\\x{{{ord(c):X}}}"
        if size + len(piece) > MAX_VALUE:
            break
        out.append(piece)
        size += len(piece)
    return "utf-8; " + "".join(out)


def _status(rcpt: FailedRecipient, *, delayed: bool) -> str:
    if _STATUS_RE.match(rcpt.status):
        return rcpt.status
    return "4.0.0" if delayed or rcpt.action == "delayed" else "5.0.0"


def _remote_mta(remote: str | None) -> str | None:
    """"mx.example.org [192.0.2.1]" → "mx.example.org": RFC 3464 §2.3.5 wants the name."""
    match = _REMOTE_RE.fullmatch(remote.strip()) if remote else None
    if match is None:
        return None
    name = match.group(1).rstrip(".")
    return name if _HOST_RE.match(name) else None


def _diagnostic(text: str) -> str:
    """RFC 3464 §2.3.6 "diagnostic-type; text"; local problems (no SMTP reply) get our own
    X- type, as Postfix writes "X-Postfix;"."""
    value = _ascii(" ".join(text.split()))[:MAX_VALUE]
    return value if _DIAGNOSTIC_TYPE_RE.match(value) else f"X-Mailhouse; {value}"


def _field(name: str, value: str) -> bytes:
    """`name: value`, folded at spaces to FOLD_WIDTH where possible (RFC 5322 §2.2.3) and
    never longer than MAX_LINE (one enormous word is cut)."""
    first = f"{name}:"
    lines: list[str] = []
    current = first
    for word in _ascii(value).split(" "):
        if not word:
            continue
        if current != first and len(current) + 1 + len(word) > FOLD_WIDTH:
            lines.append(current)
            current = ""  # the continuation line starts with the space added below
        current = f"{current} {word}"
        while len(current) > MAX_LINE:
            lines.append(current[:MAX_LINE])
            current = " " + current[MAX_LINE:]
    lines.append(current)
    return "\r\n".join(lines).encode("ascii")


def _date(timestamp: float) -> bytes:
    """RFC 5322 §3.3 date-time in UTC ("+0000", not "-0000", which means "zone unknown")."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC)).encode("ascii")


def _strip_controls(text: str) -> str:
    """Nothing from outside may start a header field or a MIME boundary of its own."""
    return "".join(c if (c >= " " and c != "\x7f") else " " for c in text)


def _ascii(text: str) -> str:
    return "".join(c if " " <= c < "\x7f" else "?" for c in text)


def _boundary(bodies: Sequence[bytes]) -> str:
    """A boundary that occurs in no part. "=_" never appears in quoted-printable output
    (RFC 2045 §6.7), and the random part makes a clash in 7-bit parts astronomically rare;
    the loop makes it impossible."""
    while True:
        boundary = f"=_mailhouse_dsn_{secrets.token_hex(12)}"
        needle = boundary.encode("ascii")
        if not any(needle in body for body in bodies):
            return boundary
