"""SASL mechanisms as state machines: wire responses in, challenges or credentials out."""

from __future__ import annotations

import base64

import pytest

from mailhouse.proto import sasl


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_initial_response() -> None:
    result = sasl.new_mechanism("plain").start(b64(b"\0alice@example.test\0secret"))
    assert result == sasl.Credentials("PLAIN", "", "alice@example.test", "secret")
    assert "secret" not in repr(result)


def test_plain_without_initial_response_gets_empty_challenge() -> None:
    mech = sasl.new_mechanism("PLAIN")
    challenge = mech.start(None)
    assert challenge == sasl.Challenge(b"")
    assert isinstance(challenge, sasl.Challenge) and challenge.encoded() == ""
    result = mech.step(b64(b"alice\0alice\0p\xc3\xa4ss"))
    assert result == sasl.Credentials("PLAIN", "alice", "alice", "päss")


@pytest.mark.parametrize(
    "message",
    [
        b"bob\0alice\0secret",  # RFC 4616: authzid other than the login
        b"alice\0secret",  # one NUL
        b"\0alice\0secret\0",  # three NULs
        b"\0\0secret",  # empty authcid
        b"\0alice\0",  # empty password
        b"\0al\xffice\0secret",  # not UTF-8
    ],
)
def test_plain_refusals_are_authentication_failures(message: bytes) -> None:
    with pytest.raises(sasl.SaslError) as info:
        sasl.new_mechanism("PLAIN").start(b64(message))
    assert info.value.kind is sasl.SaslErrorKind.FAILED


def test_empty_initial_response_is_equals_sign() -> None:
    # RFC 4954 §4: "=" is a zero-length initial response; for PLAIN that cannot be valid.
    with pytest.raises(sasl.SaslError) as info:
        sasl.new_mechanism("PLAIN").start(b"=")
    assert info.value.kind is sasl.SaslErrorKind.FAILED


def test_login_challenges_in_order() -> None:
    mech = sasl.new_mechanism("LOGIN")
    assert mech.start(None) == sasl.Challenge(b"Username:")
    assert mech.step(b64(b"alice@example.test")) == sasl.Challenge(b"Password:")
    assert mech.step(b64(b"secret")) == sasl.Credentials("LOGIN", "", "alice@example.test",
                                                         "secret")


def test_login_initial_response_is_the_user_name() -> None:
    mech = sasl.new_mechanism("LOGIN")
    assert mech.start(b64(b"alice")) == sasl.Challenge(b"Password:")
    assert mech.step(b64(b"pw")) == sasl.Credentials("LOGIN", "", "alice", "pw")
    assert sasl.Challenge(b"Password:").encoded() == "UGFzc3dvcmQ6"


@pytest.mark.parametrize("response", [b"not base64!", b"YWJj\x00", b"YWJjZA", b"YW Jj"])
def test_bad_base64(response: bytes) -> None:
    mech = sasl.new_mechanism("LOGIN")
    mech.start(None)
    with pytest.raises(sasl.SaslError) as info:
        mech.step(response)
    assert info.value.kind is sasl.SaslErrorKind.BAD_BASE64


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN"])
def test_star_cancels(name: str) -> None:
    mech = sasl.new_mechanism(name)
    mech.start(None)
    with pytest.raises(sasl.SaslError) as info:
        mech.step(b"*")
    assert info.value.kind is sasl.SaslErrorKind.CANCELLED


def test_unknown_or_unoffered_mechanism() -> None:
    for name, offered in (("CRAM-MD5", sasl.MECHANISMS), ("LOGIN", ("PLAIN",))):
        with pytest.raises(sasl.SaslError) as info:
            sasl.new_mechanism(name, offered)
        assert info.value.kind is sasl.SaslErrorKind.UNSUPPORTED


def test_oversized_response_refused_before_decoding() -> None:
    with pytest.raises(sasl.SaslError) as info:
        sasl.new_mechanism("PLAIN").start(b"A" * 8000)
    assert info.value.kind is sasl.SaslErrorKind.FAILED


def test_no_step_after_completion() -> None:
    mech = sasl.new_mechanism("PLAIN")
    mech.start(b64(b"\0a\0b"))
    with pytest.raises(sasl.SaslError):
        mech.step(b64(b"\0a\0b"))
