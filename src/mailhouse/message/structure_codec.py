"""MessageStructure to and from the bytes the store keeps beside each message.

JSON with one-letter keys and positional lists: compact, readable when debugging, and parsed by
the C json module. The first key is the format version, FORMAT_VERSION: a blob of another
version (an older parser's, or anything unreadable) raises StructureFormatError, and the caller
re-parses the message file and stores the new blob. Bump the version whenever the parser's
output changes, not only the layout.

Size: the parser's limits bound the blob (structure.MAX_PARTS parts with offsets and types,
plus at most structure.MAX_STORED_CHARS of header text, plus the search fields of the top
message, each cut by mime_headers' per-field limits): a few hundred KiB at worst, about 300-600
octets for a common message.
"""

from __future__ import annotations

import json
from typing import Any

from mailhouse.message.envelope import Address, Envelope
from mailhouse.message.mime_headers import ContentInfo
from mailhouse.message.searchfields import SearchFields
from mailhouse.message.structure import MessageStructure, Part

FORMAT_VERSION = 1


class StructureFormatError(ValueError):
    """The blob is of another version or damaged: parse the message again."""


def _addrs(addresses: list[Address] | None) -> list[list[str | None]] | None:
    return None if addresses is None else [list(a) for a in addresses]


def _content(c: ContentInfo) -> list[Any]:
    return [c.type, c.subtype, [list(p) for p in c.params], c.id, c.description, c.encoding,
            c.md5, c.disposition, [list(p) for p in c.disposition_params], c.language,
            c.location, c.defaulted]


def _envelope(e: Envelope) -> list[Any]:
    return [e.date, e.subject, _addrs(e.from_), _addrs(e.sender), _addrs(e.reply_to),
            _addrs(e.to), _addrs(e.cc), _addrs(e.bcc), e.in_reply_to, e.message_id]


def _part(p: Part) -> dict[str, Any]:
    out: dict[str, Any] = {"h": p.header_start, "b": p.body_start, "e": p.body_end,
                           "n": p.lines, "c": _content(p.content)}
    if p.children:
        out["p"] = [_part(c) for c in p.children]
    if p.message is not None:
        out["m"] = _part(p.message)
    if p.envelope is not None:
        out["E"] = _envelope(p.envelope)
    return out


def _search(s: SearchFields) -> list[Any]:
    return [s.from_text, s.to_text, s.cc_text, s.bcc_text, s.subject_text, s.sent_date,
            s.message_id, s.in_reply_to, s.references, s.base_subject, s.sort_from, s.sort_to,
            s.sort_cc, s.display_from, s.display_to]


def to_bytes(structure: MessageStructure) -> bytes:
    doc = {"v": FORMAT_VERSION, "z": structure.size, "t": int(structure.truncated),
           "r": _part(structure.root), "s": _search(structure.search)}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", errors="surrogatepass")


def _from_addrs(raw: Any) -> list[Address] | None:
    return None if raw is None else [Address(*a) for a in raw]


def _from_part(raw: dict[str, Any]) -> Part:
    c = raw["c"]
    content = ContentInfo(c[0], c[1], [(k, v) for k, v in c[2]], c[3], c[4], c[5], c[6], c[7],
                          [(k, v) for k, v in c[8]], list(c[9]), c[10], bool(c[11]))
    part = Part(raw["h"], raw["b"], raw["e"], content, raw["n"],
                [_from_part(x) for x in raw.get("p", ())])
    if "m" in raw:
        part.message = _from_part(raw["m"])
    if "E" in raw:
        e = raw["E"]
        part.envelope = Envelope(
            e[0], e[1], _from_addrs(e[2]), _from_addrs(e[3]), _from_addrs(e[4]),
            _from_addrs(e[5]), _from_addrs(e[6]), _from_addrs(e[7]), e[8], e[9])
    return part


def from_bytes(blob: bytes) -> MessageStructure:
    try:
        doc = json.loads(blob.decode("utf-8", errors="surrogatepass"))
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
            raise StructureFormatError(f"not a version {FORMAT_VERSION} structure")
        search = SearchFields(*doc["s"])
        return MessageStructure(_from_part(doc["r"]), search, doc["z"], bool(doc["t"]))
    except StructureFormatError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
        raise StructureFormatError(f"damaged structure: {exc}") from exc


def search_to_bytes(fields: SearchFields) -> bytes:
    """The search and sort fields alone (a few hundred octets), so SEARCH on addresses and
    subjects, SORT and THREAD read and decode only these, not the whole structure."""
    doc = [FORMAT_VERSION, _search(fields)]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", errors="surrogatepass")


SEARCH_PREFIX = b"[%d," % FORMAT_VERSION  # how search_to_bytes's output starts


def literal_in_search_bytes(text: str) -> bytes | None:
    """The octets by which `text`, when a search field holds it, appears inside
    search_to_bytes's output; None when the encoding may write it otherwise (JSON escapes
    quotation marks, backslashes and control characters). Lets a store narrow a SEARCH to
    the messages whose stored fields contain a needle without decoding any of them."""
    if any(c in '"\\' or c < " " for c in text):
        return None
    return text.encode("utf-8", errors="surrogatepass")


def search_from_bytes(blob: bytes) -> SearchFields:
    try:
        doc = json.loads(blob.decode("utf-8", errors="surrogatepass"))
        if not isinstance(doc, list) or len(doc) != 2 or doc[0] != FORMAT_VERSION:
            raise StructureFormatError(f"not version {FORMAT_VERSION} search fields")
        return SearchFields(*doc[1])
    except StructureFormatError:
        raise
    except (ValueError, TypeError) as exc:
        raise StructureFormatError(f"damaged search fields: {exc}") from exc
