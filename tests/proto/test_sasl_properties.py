"""Properties of the SASL mechanisms (proto/sasl.py): any client response gives a step or a
SaslError, never another exception; well-formed credentials come back out exactly."""

from __future__ import annotations

import base64

from hypothesis import example, given
from hypothesis import strategies as st

from mailhouse.proto import sasl
from tests.proto.grammar_checks import check_sasl_decode, check_sasl_exchange

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
responses = st.one_of(
    st.binary(max_size=200),
    st.text(st.sampled_from(B64 + " *\r\n\0"), max_size=200).map(str.encode),
    st.binary(max_size=150).map(base64.b64encode),
    st.lists(st.binary(max_size=20), max_size=4).map(b"\0".join).map(base64.b64encode),
)
names = st.one_of(st.sampled_from(["PLAIN", "plain", "LOGIN", "Login", "CRAM-MD5", ""]),
                  st.text(max_size=12))


@given(line=responses, initial=st.booleans())
@example(line=b"=", initial=True)
@example(line=b"*", initial=False)
@example(line=b"A" * 6000, initial=False)
def test_decode_response_is_total(line: bytes, initial: bool) -> None:
    check_sasl_decode(line, initial=initial)


@given(name=names, initial=st.one_of(st.none(), responses),
       steps=st.lists(responses, max_size=4))
def test_any_exchange_ends_in_a_step_or_sasl_error(name: str, initial: bytes | None,
                                                  steps: list[bytes]) -> None:
    check_sasl_exchange(name, initial, steps)


fields = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), min_size=1,
                 max_size=40)


@given(user=fields, password=fields, with_authzid=st.booleans(), initial=st.booleans())
def test_plain_round_trip(user: str, password: str, with_authzid: bool, initial: bool) -> None:
    authzid = user if with_authzid else ""
    wire = base64.b64encode(f"{authzid}\0{user}\0{password}".encode())
    mechanism = sasl.new_mechanism("PLAIN")
    result = mechanism.start(wire) if initial else mechanism.step(wire)
    if not initial:
        mechanism = sasl.new_mechanism("PLAIN")
        assert mechanism.start(None) == sasl.Challenge(b"")
        result = mechanism.step(wire)
    assert result == sasl.Credentials("PLAIN", authzid, user, password)


@given(user=fields, password=fields, initial=st.booleans())
def test_login_round_trip(user: str, password: str, initial: bool) -> None:
    mechanism = sasl.new_mechanism("LOGIN")
    encoded_user = base64.b64encode(user.encode())
    if initial:
        step = mechanism.start(encoded_user)
    else:
        assert mechanism.start(None) == sasl.Challenge(b"Username:")
        step = mechanism.step(encoded_user)
    assert step == sasl.Challenge(b"Password:")
    result = mechanism.step(base64.b64encode(password.encode()))
    assert result == sasl.Credentials("LOGIN", "", user, password)
