"""Properties of the SMTP server core for any byte stream, cut anywhere (tests/proto/harness.py
says what must hold). Profiles: tests/proto/conftest.py; the same checks fuzzed: fuzz/."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from tests.proto.harness import (
    SMTP_CONFIGS,
    SMTP_WORDS,
    run_smtp,
    smtp_cut_invariant,
)

# A session: real commands and message lines mixed with arbitrary bytes.
streams = st.lists(st.one_of(st.sampled_from(SMTP_WORDS), st.binary(max_size=24)),
                   max_size=40).map(b"".join)
sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
configs = st.sampled_from(range(len(SMTP_CONFIGS)))


@given(data=st.binary(max_size=2000), sizes=sizes, config=configs, tls=st.booleans())
def test_any_bytes_any_cut(data: bytes, sizes: list[int], config: int, tls: bool) -> None:
    smtp_cut_invariant(SMTP_CONFIGS[config], data, sizes, tls_active=tls)


@given(data=streams, sizes=sizes, config=configs, tls=st.booleans())
@example(data=b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
              b"x\r\n.\r\nNOOP\r\n", sizes=[1], config=0, tls=False)
@example(data=b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT 3\r\n"
              b"a\r\nBDAT 2 LAST\r\n\r\nQUIT\r\n", sizes=[2, 5], config=0, tls=False)
@example(data=b"EHLO c\r\nAUTH PLAIN\r\nAGFsaWNlAHB3\r\nMAIL FROM:<a@b.test>\r\n", sizes=[3],
         config=2, tls=True)
def test_sessions_any_cut(data: bytes, sizes: list[int], config: int, tls: bool) -> None:
    smtp_cut_invariant(SMTP_CONFIGS[config], data, sizes, tls_active=tls)


@given(data=streams, config=configs)
def test_byte_at_a_time(data: bytes, config: int) -> None:
    whole = run_smtp(SMTP_CONFIGS[config], [data])
    assert run_smtp(SMTP_CONFIGS[config], [bytes([b]) for b in data]).out == whole.out


@given(line=st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b),
       repeat=st.integers(min_value=1, max_value=400))
def test_long_lines_and_floods_stay_bounded(line: bytes, repeat: int) -> None:
    # Overlong lines, lines with no end, floods of one line: replies well formed, memory bounded
    # (run_smtp checks `buffered` after every piece).
    config = SMTP_CONFIGS[1]
    run_smtp(config, [b"EHLO c\r\n", line * repeat, b"\r\n", (line + b"\r\n") * repeat])
