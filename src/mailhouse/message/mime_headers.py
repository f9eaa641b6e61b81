"""Header fields of one MIME part, read from the bytes the structure parser kept.

Values stay as on the wire (unfolded, 8-bit octets read as UTF-8 with replacement) because IMAP
returns header text undecoded (RFC 9051 §7.5.2); only parameters are decoded, with the stdlib's
RFC 2231 code (continuations and charsets), since BODYSTRUCTURE carries them as values, not as
header text. Nothing here raises on malformed input: a field that cannot be read is absent.
"""

from __future__ import annotations

import email.message
import email.utils
from dataclasses import dataclass, field

# Longest value kept for one field (characters). Envelope address lists may be long (a To of a
# few hundred recipients), so they get more room than Content-* fields.
MAX_CONTENT_VALUE_CHARS = 1024
MAX_ENVELOPE_VALUE_CHARS = 16384
# Parameters kept per Content-Type / Content-Disposition field.
MAX_PARAMS = 32

ENVELOPE_FIELDS = (
    "date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to",
    "message-id", "references",
)
CONTENT_FIELDS = (
    "content-type", "content-transfer-encoding", "content-id", "content-description",
    "content-disposition", "content-language", "content-location", "content-md5",
)


def split_fields(header: bytes) -> list[tuple[str, str]]:
    """Unfolded (lowercased name, raw value) pairs in order; lines that are no field are skipped.

    Unfolding removes the CRLF before whitespace (RFC 5322 §2.2.3); the value keeps its inner
    whitespace and loses only the blank after the colon and trailing blanks.
    """
    text = header.decode("utf-8", errors="replace")
    out: list[tuple[str, str]] = []
    name: str | None = None
    chunks: list[str] = []
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line[:1] in (" ", "\t"):
            if name is not None:
                chunks.append(line)
            continue
        if name is not None:
            out.append((name, "".join(chunks).strip(" \t\r")))
            name = None
        colon = line.find(":")
        if colon <= 0:
            continue
        candidate = line[:colon].rstrip(" \t")
        if not candidate or any(c <= " " or c > "~" for c in candidate):
            continue
        name, chunks = candidate.lower(), [line[colon + 1:]]
    if name is not None:
        out.append((name, "".join(chunks).strip(" \t\r")))
    return out


def first_values(fields: list[tuple[str, str]], wanted: tuple[str, ...],
                 limit: int) -> dict[str, str]:
    """The first occurrence of each wanted field, cut to `limit` characters."""
    found: dict[str, str] = {}
    for name, value in fields:
        if name in wanted and name not in found:
            found[name] = value[:limit]
    return found


def parse_params(header_name: str, value: str) -> tuple[str, list[tuple[str, str]]]:
    """(lowercased main value, [(lowercased name, decoded value)]) of a parameterised field.

    RFC 2231 continuations (`name*0`, `name*1*`) are joined and `charset'lang'%xx` values
    decoded by the stdlib; an unknown charset or bad percent-escape falls back to the raw text.
    """
    msg = email.message.Message()
    try:
        msg[header_name] = value
        params = msg.get_params(header=header_name, failobj=[]) or []
    except Exception:  # the stdlib's parameter code has raised on odd input before
        return value.split(";", 1)[0].strip().lower(), []
    if not params:
        return "", []
    main = str(params[0][0]).strip().lower()
    out: list[tuple[str, str]] = []
    for name, raw in params[1:MAX_PARAMS + 1]:
        try:
            decoded = email.utils.collapse_rfc2231_value(raw)
        except Exception:
            decoded = raw[2] if isinstance(raw, tuple) else str(raw)
        out.append((str(name).strip().lower(), str(decoded)[:MAX_CONTENT_VALUE_CHARS]))
    return main, out


@dataclass(slots=True)
class ContentInfo:
    """The body fields of RFC 9051 §7.5.2 that come from one part's own header."""

    type: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    md5: str | None = None
    disposition: str | None = None
    disposition_params: list[tuple[str, str]] = field(default_factory=list)
    language: list[str] = field(default_factory=list)
    location: str | None = None
    # True when the part said nothing usable about its type and the default applied.
    defaulted: bool = True

    @property
    def mime_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def _is_token(text: str) -> bool:
    return bool(text) and all(
        "!" <= c <= "~" and c not in '()<>@,;:\\"/[]?=' for c in text)


def content_info(values: dict[str, str], in_digest: bool) -> ContentInfo:
    """ContentInfo from a part's first Content-* values (RFC 2045 §5.2 defaults).

    A missing or unreadable Content-Type means text/plain; charset=us-ascii, or message/rfc822
    directly inside multipart/digest (RFC 2046 §5.1.5).
    """
    info = ContentInfo()
    if in_digest:
        info.type, info.subtype, info.params = "message", "rfc822", []
    else:
        info.params = [("charset", "us-ascii")]
    raw_type = values.get("content-type")
    if raw_type is not None:
        main, params = parse_params("content-type", raw_type)
        kind, slash, sub = main.partition("/")
        kind, sub = kind.strip(), sub.strip()
        if slash and _is_token(kind) and _is_token(sub):
            info.type, info.subtype, info.params, info.defaulted = kind, sub, params, False
    cte = values.get("content-transfer-encoding")
    if cte is not None:
        token = cte.split("(", 1)[0].strip().lower()
        if _is_token(token):
            info.encoding = token
    info.id = values.get("content-id")
    info.description = values.get("content-description")
    info.md5 = values.get("content-md5")
    info.location = values.get("content-location")
    disp = values.get("content-disposition")
    if disp is not None:
        main, params = parse_params("content-disposition", disp)
        if _is_token(main):
            info.disposition, info.disposition_params = main, params
    lang = values.get("content-language")
    if lang is not None:
        info.language = [t.strip() for t in lang.split(",") if t.strip()][:MAX_PARAMS]
    return info
