"""Names and line endings shared by both sides of a mail transfer (service/mailfiles.py): the
Maildir++ folder names (modified UTF-7, RFC 3501 §5.1.3), maildir(5) info letters and the
CRLF/LF conversions. Pure functions with no file or store access."""

from __future__ import annotations

import base64
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Final

INBOX: Final = "INBOX"
# IMAP hierarchy delimiter of mailbox names in the store.
MAILBOX_DELIMITER: Final = "/"
# Maildir++ joins hierarchy levels with "." and marks folders with a leading ".".
MAILDIRPP_SEPARATOR: Final = "."
MAILDIR_SUBDIRS: Final = ("tmp", "new", "cur")
INFO_PREFIX: Final = ":2,"
KEYWORDS_FILE: Final = "dovecot-keywords"
MAX_KEYWORD_LETTERS: Final = 26  # a-z
CHUNK: Final = 1 << 20

# maildir(5) info letters ↔ IMAP system flags (RFC 9051 §2.3.2); P is RFC 5550's $Forwarded.
FLAG_LETTERS: Final = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
LETTER_OF_FLAG: Final = {flag: letter for letter, flag in FLAG_LETTERS.items()}
# mbox Status / X-Status header letters (as written by mutt, Thunderbird and Dovecot).
STATUS_LETTERS: Final = {"R": "\\Seen"}
X_STATUS_LETTERS: Final = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}


# --- names ------------------------------------------------------------------------------------

def encode_mutf7(text: str) -> str:
    """Modified UTF-7 of RFC 3501 §5.1.3: printable ASCII as itself ("&" as "&-"), everything
    else as UTF-16 in base64 with "," for "/" between "&" and "-"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            encoded = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{encoded}-")
            pending.clear()

    for char in text:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Inverse of encode_mutf7; ValueError for anything that is not modified UTF-7."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "&":
            if not 0x20 <= ord(char) <= 0x7E:
                raise ValueError(f"character {char!r} not allowed in modified UTF-7")
            out.append(char)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified UTF-7 sequence")
        if end == i + 1:
            out.append("&")
        else:
            chunk = text[i + 1 : end].replace(",", "/")
            try:
                raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"bad modified UTF-7 sequence {text[i:end + 1]!r}") from None
        i = end + 1
    return "".join(out)


def maildir_folder_name(mailbox: str) -> str:
    """Store mailbox name → Maildir++ directory name (".Lists.Python"). Never empty, never
    holds "/", never "." or "..": safe as one path component."""
    if not mailbox:
        raise ValueError("empty mailbox name")
    levels = []
    for level in mailbox.split(MAILBOX_DELIMITER):
        encoded = encode_mutf7(level).replace("%", "%25").replace(".", "%2E")
        levels.append(encoded)
    return MAILDIRPP_SEPARATOR + MAILDIRPP_SEPARATOR.join(levels)


def mailbox_from_folder(dirname: str) -> str:
    """Maildir++ directory name → store mailbox name; ValueError when it is not a folder name."""
    if not dirname.startswith(MAILDIRPP_SEPARATOR) or dirname in (".", ".."):
        raise ValueError(f"{dirname!r} is not a Maildir++ folder")
    levels = []
    for level in dirname[1:].split(MAILDIRPP_SEPARATOR):
        unescaped = re.sub(r"%(2[Ee5])", lambda m: "." if m.group(1) in "2E2e" else "%", level)
        levels.append(decode_mutf7(unescaped))
    return MAILBOX_DELIMITER.join(levels)


def escape_host(hostname: str) -> str:
    # maildir(5): '/' and ':' in the host part as octal escapes; ',' separates Dovecot's fields.
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def info_for(flags: Iterable[str], keyword_letters: dict[str, str]) -> str:
    """Maildir info letters for a message's flags, in ASCII order as maildir(5) demands."""
    letters = {LETTER_OF_FLAG[f] for f in flags if f in LETTER_OF_FLAG}
    letters |= {keyword_letters[f] for f in flags if f in keyword_letters}
    return "".join(sorted(letters))


def flags_from_info(info: str, keywords: dict[str, str]) -> tuple[str, ...]:
    flags: list[str] = []
    for letter in info:
        if letter in FLAG_LETTERS:
            flags.append(FLAG_LETTERS[letter])
        elif letter in keywords:
            flags.append(keywords[letter])
    return tuple(dict.fromkeys(flags))


# --- line endings -----------------------------------------------------------------------------

class _LineEnds(ABC):
    """A streaming line-ending conversion: a CR at a chunk's end waits for the next chunk, so
    a CRLF split across two chunks is still seen whole."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        return self._convert(data)

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held

    @abstractmethod
    def _convert(self, data: bytes) -> bytes: ...


class CrlfToLf(_LineEnds):
    """Streaming CRLF → LF."""

    def _convert(self, data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n")


class LfToCrlf(_LineEnds):
    """Streaming bare LF → CRLF (existing CRLF left alone): our store keeps the wire form."""

    _BARE_LF = re.compile(rb"(?<!\r)\n")

    def _convert(self, data: bytes) -> bytes:
        return self._BARE_LF.sub(b"\r\n", data)
