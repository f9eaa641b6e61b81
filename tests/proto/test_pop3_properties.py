"""Properties of the POP3 server core for any byte stream, cut anywhere (tests/proto/harness.py
says what must hold). Profiles: tests/proto/conftest.py; the same checks fuzzed: fuzz/."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from tests.proto.harness import POP3_CONFIGS, POP3_WORDS, pop3_cut_invariant, run_pop3

streams = st.lists(st.one_of(st.sampled_from(POP3_WORDS), st.binary(max_size=24)),
                   max_size=40).map(b"".join)
sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
configs = st.sampled_from(range(len(POP3_CONFIGS)))


@given(data=st.binary(max_size=2000), sizes=sizes, config=configs, tls=st.booleans())
def test_any_bytes_any_cut(data: bytes, sizes: list[int], config: int, tls: bool) -> None:
    pop3_cut_invariant(POP3_CONFIGS[config], data, sizes, tls_active=tls)


@given(data=streams, sizes=sizes, config=configs, tls=st.booleans())
@example(data=b"USER alice\r\nPASS secret\r\nLIST\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\nQUIT\r\n",
         sizes=[1], config=0, tls=True)
@example(data=b"AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nUIDL\r\nRSET\r\nQUIT\r\n", sizes=[4],
         config=0, tls=True)
def test_sessions_any_cut(data: bytes, sizes: list[int], config: int, tls: bool) -> None:
    pop3_cut_invariant(POP3_CONFIGS[config], data, sizes, tls_active=tls)


@given(data=streams, config=configs)
def test_byte_at_a_time(data: bytes, config: int) -> None:
    whole = run_pop3(POP3_CONFIGS[config], [data])
    assert run_pop3(POP3_CONFIGS[config], [bytes([b]) for b in data]).out == whole.out


@given(line=st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b),
       repeat=st.integers(min_value=1, max_value=400))
def test_long_lines_and_floods_stay_bounded(line: bytes, repeat: int) -> None:
    run_pop3(POP3_CONFIGS[1], [line * repeat, b"\r\n", (line + b"\r\n") * repeat])
