"""What must hold for ANY input to the SMTP command grammar, the address grammar and the SASL
mechanisms. Shared by the property tests (hypothesis) and the fuzz targets (atheris, fuzz/):
each check takes arbitrary input and raises AssertionError (or the unexpected exception itself)
when the contract is broken.

The contract: a value, or the grammar's own error (ParseError, AddressError, SaslError), never
another exception; and where a value can be written back, reading it again gives the same value.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import TypeVar

from mailhouse.model import Address, AddressError
from mailhouse.proto import sasl
from mailhouse.proto.smtp.grammar import (
    ParseError,
    parse_auth,
    parse_bdat,
    parse_params,
    parse_path,
    split_command,
)

T = TypeVar("T")
_FORBIDDEN_IN_ADDRESSES = frozenset("\r\n\0\x85\u2028\u2029")


def _attempt(call: Callable[[], T], error: type[Exception]) -> T | None:
    try:
        return call()
    except error:
        return None


def check_split_command(line: str) -> None:
    verb, args = split_command(line)
    head, _, rest = line.partition(" ")
    assert (verb, args) == (head.upper(), rest)


def check_parse_path(args: str, prefix: str, *, allow_null: bool, utf8: bool | None) -> None:
    try:
        path = parse_path(args, prefix, allow_null=allow_null, utf8=utf8)
    except ParseError as exc:
        assert 400 <= exc.reply.code < 600
        return
    assert all(key == key.upper() for key in path.params)
    if path.address is not None:
        text = str(path.address)
        assert not _FORBIDDEN_IN_ADDRESSES & set(text)
        assert Address.parse(text, utf8=True) == path.address
        if utf8 is False:
            assert text.isascii()


def check_parse_params(text: str, *, utf8: bool) -> None:
    params = _attempt(lambda: parse_params(text, utf8=utf8), ParseError)
    if params is not None:
        assert len(params) <= len(text.split())
        assert all(key == key.upper() for key in params)


def check_parse_bdat(args: str) -> None:
    try:
        size, last = parse_bdat(args)
    except ParseError as exc:
        assert exc.reply.code == 501
        return
    assert 0 <= size < 10**18 and isinstance(last, bool)
    assert parse_bdat(f"{size} LAST" if last else str(size)) == (size, last)


def check_parse_auth(args: str) -> None:
    try:
        name, initial = parse_auth(args)
    except ParseError as exc:
        assert exc.reply.code == 501
        return
    assert name == name.upper() and 1 <= len(name) <= 20
    assert initial is None or (initial and initial.isascii())
    again = name if initial is None else f"{name} {initial.decode()}"
    assert parse_auth(again) == (name, initial)


def check_address(text: str, *, utf8: bool) -> None:
    """AddressError, or an Address that writes back to text parsing to the same Address, with no
    control character, line separator or (without utf8) non-ASCII in it."""
    try:
        address = Address.parse(text, utf8=utf8)
    except AddressError:
        return
    written = str(address)
    assert not _FORBIDDEN_IN_ADDRESSES & set(written), written
    assert address.domain.isprintable() and " " not in address.domain, written
    if not utf8:
        assert written.isascii()
    assert Address.parse(written, utf8=utf8) == address


def check_sasl_exchange(name: str, initial: bytes | None, responses: Sequence[bytes]) -> None:
    """Any exchange ends in a Challenge, Credentials or SaslError; credentials are never empty,
    never for another identity, and never come out twice."""
    try:
        mechanism = sasl.new_mechanism(name)
    except sasl.SaslError as exc:
        assert exc.kind is sasl.SaslErrorKind.UNSUPPORTED
        return
    step: sasl.Step | None = _attempt(lambda: mechanism.start(initial), sasl.SaslError)
    for response in responses:
        if not isinstance(step, sasl.Challenge):
            break
        step = _attempt(lambda r=response: mechanism.step(r), sasl.SaslError)  # type: ignore[misc]
    if isinstance(step, sasl.Challenge):
        assert isinstance(step.encoded(), str)
    if isinstance(step, sasl.Credentials):
        assert step.username and step.password
        assert step.authzid in ("", step.username)
        again = base64.b64encode(b"\0" + step.username.encode() + b"\0x")
        assert _attempt(lambda: mechanism.step(again), sasl.SaslError) is None


def check_sasl_decode(line: bytes, *, initial: bool) -> None:
    decoded = _attempt(lambda: sasl.decode_response(line, initial=initial), sasl.SaslError)
    if decoded is not None:
        assert len(decoded) <= sasl.MAX_DECODED + 3
