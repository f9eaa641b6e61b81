"""The header-only FETCH path (Thunderbird's header download) finds where a header ends in the
header's own octets: it must agree with the stored structure, and fall back to it for headers
longer than what it reads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhouse.message.structure import parse_message
from mailhouse.model import Account
from mailhouse.service.imap.messages import HEADER_PROBE, header_end
from mailhouse.store.base import Store
from tests.service.imap.conftest import Runner, logged_in, put

_PIECES = st.sampled_from([b"a", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"X: y\r\n",
                           b"--b\r\n", b"\r\n\r\n", b"\n\n", b"\r\r\n"])


@settings(max_examples=2000)
@given(st.lists(_PIECES, max_size=40))
def test_header_end_agrees_with_the_structure_parser(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    end = header_end(data)
    assert (len(data) if end is None else end) == parse_message(data).root.body_start


def test_header_fields_of_short_and_long_headers(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        long_field = b"X-Long: " + b"y" * (HEADER_PROBE + 100) + b"\r\n"
        await put(store, account, b"Subject: short\r\nFrom: a@example.net\r\n\r\nbody\r\n")
        await put(store, account, b"Subject: long\r\n" + long_field + b"From: b@example.net\r\n"
                  b"\r\nbody\r\n")
        await put(store, account, b"Subject: no body at all\r\n")
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (Subject From)])")
        assert b"Subject: short\r\nFrom: a@example.net\r\n\r\n)" in out
        assert b"Subject: long\r\nFrom: b@example.net\r\n\r\n)" in out
        assert b"Subject: no body at all\r\n\r\n)" in out
        out = await client.ok(b"c FETCH 2 (RFC822.HEADER)")
        assert b"RFC822.HEADER {%d}" % (len(long_field) + 15 + 21 + 2) in out

    imap(scenario)
