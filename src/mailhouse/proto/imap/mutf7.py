"""Modified UTF-7 for mailbox names (RFC 3501 §5.1.3).

Strict both ways: the decoder refuses every spelling the RFC forbids (so that one name has one
wire form and a client cannot create two mailboxes that look alike), the encoder produces the one
canonical form. The stdlib's "utf-7" codec is not this encoding (other alphabet, different shift
rules), hence code of our own.
"""

from __future__ import annotations

import base64
import binascii


class MUTF7Error(ValueError):
    """The octets are not valid modified UTF-7."""


def _printable(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def encode(name: str) -> bytes:
    """Encode a mailbox name: printable US-ASCII stands for itself ("&" as "&-"), runs of
    anything else become "&" + base64 (with "," for "/") of UTF-16BE + "-"."""
    out: list[bytes] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            b64 = base64.b64encode(raw).rstrip(b"=").replace(b"/", b",")
            out.append(b"&" + b64 + b"-")
            run.clear()

    for ch in name:
        if _printable(ch):
            flush()
            out.append(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            run.append(ch)
    flush()
    return b"".join(out)


def decode(data: bytes) -> str:
    """Decode a wire name; raise MUTF7Error for 8-bit octets, controls, an unterminated or empty
    shift other than "&-", bad base64, non-zero padding bits, an odd UTF-16 length, unpaired
    surrogates, a shifted run holding printable ASCII, or two shifted runs back to back."""
    out: list[str] = []
    i, n = 0, len(data)
    previous_shift_end = -2
    while i < n:
        c = data[i]
        if not 0x20 <= c <= 0x7E:
            raise MUTF7Error("octet outside printable US-ASCII")
        if c != 0x26:  # "&"
            out.append(chr(c))
            i += 1
            continue
        end = data.find(b"-", i + 1)
        if end < 0:
            raise MUTF7Error("unterminated &-shift")
        body = data[i + 1 : end]
        if not body:
            out.append("&")
            i = end + 1
            continue
        if previous_shift_end == i:
            raise MUTF7Error("two shifted runs back to back")
        out.append(_decode_run(body))
        i = end + 1
        previous_shift_end = i
    return "".join(out)


def _decode_run(body: bytes) -> str:
    if any(b not in _B64_ALPHABET for b in body) or len(body) % 4 == 1:
        raise MUTF7Error("bad modified base64")
    padded = body.replace(b",", b"/") + b"=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise MUTF7Error("bad modified base64") from exc
    # The unused low bits of the last sextet must be zero: otherwise two spellings decode alike.
    if base64.b64encode(raw).rstrip(b"=") != body.replace(b",", b"/"):
        raise MUTF7Error("non-zero padding bits")
    if len(raw) % 2:
        raise MUTF7Error("odd UTF-16 length")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error("unpaired UTF-16 surrogate") from exc
    if any(_printable(ch) for ch in text):
        raise MUTF7Error("printable US-ASCII inside a shifted run")
    return text


_B64_ALPHABET = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
)
