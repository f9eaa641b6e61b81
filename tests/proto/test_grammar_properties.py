"""Properties of the SMTP command grammar (proto/smtp/grammar.py) and the address grammar
(model.py): for any text, a value or the grammar's own error, never another exception; where a
value can be written back, reading it again gives the same value (tests/proto/grammar_checks.py).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from mailhouse.model import Address
from mailhouse.proto.smtp.grammar import parse_auth, parse_bdat, parse_path, split_command
from tests.proto import grammar_checks as check

# Text that looks like what the grammars read, and text that does not.
ADDRESS_ALPHABET = st.sampled_from([*"abcXYZ019.-+_@<>\"\\:, =[]!#~", "\u00e9", "\u00df",
                                    "\u00b2", "\u0663", "\u0085", "\u2028", "\r", "\n", "\0",
                                    "\t", " ", "\x7f", "\x01", "\U0001f600"])
texts = st.one_of(st.text(max_size=80), st.text(ADDRESS_ALPHABET, max_size=80))
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
LDH = "abcdefghijklmnopqrstuvwxyz0123456789"
KEYWORD = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"  # RFC 5321 §4.1.2 esmtp-keyword (upper)
PARAM_VALUE = "".join(chr(c) for c in range(0x21, 0x7f) if c != 0x3d)  # esmtp-value
atoms = st.text(st.sampled_from(ATEXT), min_size=1, max_size=10)
labels = st.builds(lambda head, middle: head + middle.strip("-"),
                   st.sampled_from(LDH), st.text(st.sampled_from(LDH + "-"), max_size=10))
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
locals_ = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted = st.lists(st.sampled_from([*"ab @.,<>:", '\\"', "\\\\"]), max_size=12).map(
    lambda parts: '"' + "".join(parts) + '"')


# --- split_command ---------------------------------------------------------------------------
@given(line=texts)
def test_split_command_never_fails(line: str) -> None:
    check.check_split_command(line)


@given(verb=st.text(st.characters(codec="ascii", exclude_characters=" "), max_size=10),
       args=texts)
def test_split_command_round_trip(verb: str, args: str) -> None:
    assert split_command(f"{verb} {args}") == (verb.upper(), args)


# --- parse_path ------------------------------------------------------------------------------
@given(args=texts, prefix=st.sampled_from(["FROM:", "TO:"]), allow_null=st.booleans(),
       utf8=st.sampled_from([None, False, True]))
@example(args="FROM:<a@[1.2.3.4]>", prefix="FROM:", allow_null=True, utf8=None)
@example(args='TO:<"a\\', prefix="TO:", allow_null=False, utf8=True)
@example(args="FROM:<> SIZE=\u00b2", prefix="FROM:", allow_null=True, utf8=None)
def test_parse_path_only_raises_parse_error(args: str, prefix: str, allow_null: bool,
                                            utf8: bool | None) -> None:
    check.check_parse_path(args, prefix, allow_null=allow_null, utf8=utf8)


@given(local=st.one_of(locals_, quoted), domain=domains,
       params=st.dictionaries(
           st.builds(str.__add__, st.sampled_from(KEYWORD[:-1]),
                     st.text(st.sampled_from(KEYWORD), max_size=8)),
           st.one_of(st.none(), st.text(st.sampled_from(PARAM_VALUE), min_size=1, max_size=8)),
           max_size=3))
def test_parse_path_round_trip(local: str, domain: str, params: dict[str, str | None]) -> None:
    address = f"{local}@{domain}"
    if len(local.encode()) > 64:
        return
    words = [key if value is None else f"{key}={value}" for key, value in params.items()]
    path = parse_path(" ".join([f"FROM:<{address}>", *words]), "FROM:", allow_null=True,
                      utf8=False)
    assert path.address == Address.parse(address)
    assert str(path.address) == f"{local}@{domain}"
    assert path.params == params


# --- parse_params, parse_bdat, parse_auth ----------------------------------------------------
@given(text=texts, utf8=st.booleans())
def test_parse_params_only_raises_parse_error(text: str, utf8: bool) -> None:
    check.check_parse_params(text, utf8=utf8)


@given(args=texts)
@example(args="\u00b2")
@example(args="\u0663 LAST")
def test_parse_bdat_only_raises_parse_error(args: str) -> None:
    check.check_parse_bdat(args)


@given(size=st.integers(min_value=0, max_value=10**18 - 1), last=st.booleans(),
       spelling=st.sampled_from(["LAST", "last", "Last"]))
def test_parse_bdat_round_trip(size: int, last: bool, spelling: str) -> None:
    assert parse_bdat(f"{size} {spelling}" if last else str(size)) == (size, last)


@given(args=texts)
@example(args="PLAIN \u00e9")
def test_parse_auth_only_raises_parse_error(args: str) -> None:
    check.check_parse_auth(args)


@given(name=st.text(st.sampled_from(LDH + "ABCXYZ_-"), min_size=1, max_size=20),
       initial=st.one_of(st.none(), st.text(st.sampled_from(LDH + "ABC+/="), min_size=1,
                                            max_size=40)))
def test_parse_auth_round_trip(name: str, initial: str | None) -> None:
    args = name if initial is None else f"{name} {initial}"
    assert parse_auth(args) == (name.upper(), None if initial is None else initial.encode())


# --- Address.parse ---------------------------------------------------------------------------
@given(text=texts, utf8=st.booleans())
@example(text="a@[x y]", utf8=False)
@example(text="a@[\u2028]", utf8=True)
@example(text="a\u0085@example.test", utf8=True)
@example(text="a@example.test\x1f", utf8=False)
@example(text="a\udcff@example.test", utf8=True)  # bytes decoded with surrogateescape
def test_address_parse_is_total_and_stable(text: str, utf8: bool) -> None:
    check.check_address(text, utf8=utf8)


@given(local=st.one_of(locals_, quoted), domain=domains)
def test_address_round_trip(local: str, domain: str) -> None:
    if len(local.encode()) > 64:
        return
    address = Address.parse(f"{local}@{domain}", utf8=False)
    assert (address.local, address.domain) == (local, domain)
