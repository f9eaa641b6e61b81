"""RFC 6855 (UTF8=ACCEPT) through the core and the service, on every store kind: mailbox names
as UTF-8 after ENABLE and as modified UTF-7 before (LIST, LSUB, STATUS, LIST-STATUS, SELECT's
rev2 LIST, GETQUOTAROOT), APPEND's UTF8 data item, 8-bit header fields from sessions that did
not enable UTF-8, FETCH ENVELOPE of RFC 6532 messages to both kinds of session, SEARCH's
charset rule; and the CREATE -> LIST round trip of any name as a property."""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhouse.model import Account
from mailhouse.proto.imap import mutf7
from mailhouse.proto.imap.mailbox import MAX_NAME_LENGTH
from mailhouse.proto.imap.responses import astring, literal
from mailhouse.store.base import Store
from mailhouse.store.memory import MemoryStore
from tests.service.imap.conftest import Runner, logged_in, message, put
from tests.service.imap.harness import Client
from tests.service.imap.test_with_clients import serve_and_run
from tests.service.test_imap_fetch import parsed

UTF8_MESSAGE = ("From: Jörg Müller <jörg@bücher.example>\r\nTo: alice@example.org\r\n"
                "Subject: Grüße aus Köln\r\nDate: Mon, 1 Jan 2026 10:00:00 +0000\r\n"
                "Message-ID: <grüße@bücher.example>\r\n\r\nHallo\r\n").encode()


async def utf8_client(store: Store, account: Account, mode: bytes = b"UTF8=ACCEPT") -> Client:
    client = await logged_in(store, account)
    out = await client.ok(b"e ENABLE " + mode)
    assert b"* ENABLED " + mode.upper() in out
    return client


def outside_literals(out: bytes) -> bytes:
    """The response text with every literal's octets left out."""
    kept = b""
    while (match := re.search(rb"~?\{(\d+)\}\r\n", out)) is not None:
        kept += out[:match.end()]
        out = out[match.end() + int(match.group(1)):]
    return kept + out


def fetched(out: bytes) -> dict[bytes, object]:
    """imapclient's reading of the one FETCH response in `out`."""
    return parsed(out[out.index(b"* ") + 2:out.rindex(b"\r\n", 0, out.rindex(b"\r\n"))])


def test_utf8_accept_is_announced_and_utf8_only_is_not(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.ok(b"a CAPABILITY")
        assert b" UTF8=ACCEPT" in out and b"UTF8=ONLY" not in out  # RFC 6855 §6

    imap(scenario)


# --- mailbox names ---------------------------------------------------------------------------
def test_every_response_naming_a_mailbox_follows_the_session(imap: Runner) -> None:
    name = "Données/été & 😀"
    wire7 = mutf7.encode(name)
    async def scenario(store: Store, account: Account) -> None:
        utf8 = await utf8_client(store, account)
        await utf8.ok(b'a CREATE "' + name.encode() + b'"')
        await utf8.ok(b'b SUBSCRIBE "' + name.encode() + b'"')
        legacy = await logged_in(store, account)
        quoted8 = b'"' + name.encode() + b'"'
        for client, wire in ((utf8, quoted8), (legacy, b'"' + wire7 + b'"')):
            out = await client.ok(b'c LIST "" "Donn*"')
            assert b'* LIST (\\HasNoChildren) "/" ' + wire + b"\r\n" in out
            assert b'"/" ' + (b"\"Donn\xc3\xa9es\"" if client is utf8 else b"Donn&AOk-es") in out
            out = await client.ok(b'd LSUB "" "*"')
            assert b'* LSUB () "/" ' + wire + b"\r\n" in out
            out = await client.ok(b'f LIST "" "Donn*/*" RETURN (STATUS (MESSAGES))')
            assert b"* STATUS " + wire + b" (MESSAGES 0)\r\n" in out  # RFC 5819
            arg = quoted8 if client is utf8 else b'"' + wire7 + b'"'
            out = await client.ok(b"g STATUS " + arg + b" (UIDNEXT)")
            assert b"* STATUS " + wire + b" (UIDNEXT 1)\r\n" in out
            out = await client.ok(b"h GETQUOTAROOT " + arg)
            assert b"* QUOTAROOT " + wire + b"\r\n" in out
        # No 8-bit octet ever reaches the session that did not enable UTF-8 (RFC 6855 §3).
        assert max(outside_literals(await legacy.ok(b'i LIST "" "*"'))) < 0x80
        rev2 = await utf8_client(store, account, b"IMAP4rev2")
        out = await rev2.ok(b"j SELECT " + quoted8)
        assert b'* LIST () "/" ' + quoted8 + b"\r\n" in out  # RFC 9051 §6.3.2

    imap(scenario)


def test_names_created_either_way_are_one_mailbox(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        legacy = await logged_in(store, account)
        await legacy.ok(b"a CREATE Entw&APw-rfe/Alt")  # "Entwürfe/Alt"
        utf8 = await utf8_client(store, account)
        out = await utf8.cmd('b CREATE "Entwürfe/Alt"'.encode())
        assert b"b NO [ALREADYEXISTS]" in out
        await utf8.ok('c RENAME "Entwürfe/Alt" "Entwürfe/Ältere"'.encode())
        out = await legacy.ok(b'd LIST "" "Entw*"')
        assert b'"/" Entw&APw-rfe\r\n' in out and b'"/" Entw&APw-rfe/&AMQ-ltere\r\n' in out
        await put(store, account, message(1), "Entwürfe/Ältere")
        out = await utf8.ok('e SELECT "Entwürfe/Ältere"'.encode())
        assert b"* 1 EXISTS" in out

    imap(scenario)


def test_bad_names(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        utf8 = await utf8_client(store, account)
        out = await utf8.cmd(b'a CREATE "caf\xe9"')  # Latin-1, not UTF-8 (RFC 6855 §3: BAD)
        assert b"a BAD" in out
        out = await utf8.cmd('b CREATE "e\u0301t\u00e9"'.encode())  # not NFC (RFC 9051 §5.1)
        assert b"b NO [CANNOT]" in out
        out = await utf8.cmd('c CREATE "a\u0085b"'.encode())  # C1 control (RFC 6855 §3)
        assert b"c NO [CANNOT]" in out
        longest = "é" * MAX_NAME_LENGTH
        await utf8.ok(b"d CREATE " + literal(longest))
        out = await utf8.cmd(b"f CREATE " + literal(longest + "é"))
        assert b"f NO [CANNOT] Mailbox name too long" in out
        legacy = await logged_in(store, account)
        out = await legacy.cmd('g CREATE "été"'.encode())  # 8-bit before ENABLE
        assert b"g BAD" in out
        out = await legacy.ok(b'h LIST "" "*"')
        assert astring(mutf7.encode(longest)) in out
        out = await utf8.ok(b'i LIST "" "*"')
        assert b"caf" not in out and b"a\xc2\x85b" not in out

    imap(scenario)


# hypothesis: names of 1-3 components of any characters a name may hold (no controls, no line or
# paragraph separators, no delimiter), in NFC, not under INBOX.
_COMPONENT = st.text(st.characters(blacklist_categories=("Cc", "Cs"),
                                   blacklist_characters="/\u2028\u2029"), min_size=1, max_size=8)
NAMES = st.lists(_COMPONENT, min_size=1, max_size=3).map("/".join).filter(
    lambda n: all(part not in (".", "..") for part in n.split("/"))
    and n.split("/")[0].upper() != "INBOX")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES.map(lambda n: unicodedata.normalize("NFC", n)).filter(
    lambda n: all(part not in ("", ".", "..") for part in n.split("/"))),
    utf8_creates=st.booleans())
def test_any_name_round_trips_create_to_list_in_both_modes(name: str, utf8_creates: bool) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        await store.add_domain("example.org")
        account = await store.add_account("alice@example.org", "x")
        utf8 = await utf8_client(store, account)
        legacy = await logged_in(store, account)
        creator = utf8 if utf8_creates else legacy
        wire = name.encode() if utf8_creates else mutf7.encode(name)
        await creator.ok(b"a CREATE " + literal(wire))
        for client, expected in ((utf8, astring(name, utf8=True)),
                                 (legacy, astring(mutf7.encode(name)))):
            out = await client.ok(b'b LIST "" "*"')
            assert b'"/" ' + expected + b"\r\n" in out, (name, out)
        await store.close()

    asyncio.run(main())


# --- APPEND ------------------------------------------------------------------------------------
def test_append_utf8_data_item(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await utf8_client(store, account)
        out = await client.ok(b"a APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n%s)"
                              % (len(UTF8_MESSAGE), UTF8_MESSAGE))
        assert b"+ Ready" in out and b"a OK [APPENDUID" in out
        plain = message(2)
        out = await client.ok(b"b APPEND INBOX UTF8 (~{%d+}\r\n%s) {%d+}\r\n%s UTF8 (~{%d+}\r\n%s)"
                              % (len(UTF8_MESSAGE), UTF8_MESSAGE, len(plain), plain,
                                 len(UTF8_MESSAGE), UTF8_MESSAGE))
        assert re.search(rb"b OK \[APPENDUID \d+ 2:4\]", out)
        await client.ok(b"c SELECT INBOX")
        out = await client.ok(b"d FETCH 1:4 (FLAGS BODY.PEEK[])")
        assert out.count(b"{%d}\r\n%s" % (len(UTF8_MESSAGE), UTF8_MESSAGE)) == 3
        assert b"{%d}\r\n%s" % (len(plain), plain) in out
        assert b"* 1 FETCH (FLAGS (\\Seen)" in out
        # SEARCH takes UTF-8 quoted strings, without CHARSET (RFC 6855 §3).
        out = await client.ok('f SEARCH SUBJECT "grüße"'.encode())
        assert b"* SEARCH 1 2 4\r\n" in out
        out = await client.cmd(b"g SEARCH CHARSET UTF-8 SUBJECT x")
        assert b"g BAD" in out

    imap(scenario)


def test_append_utf8_before_enable_is_bad_and_stores_nothing(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.cmd(b"a APPEND INBOX UTF8 (~{%d}" % len(UTF8_MESSAGE))
        assert out == b"a BAD APPEND UTF8 needs ENABLE UTF8=ACCEPT\r\n"
        out = await client.cmd(b"b APPEND INBOX UTF8 (~{%d+}\r\n%s)"
                               % (len(UTF8_MESSAGE), UTF8_MESSAGE))
        assert out.startswith(b"b BAD")
        rev2 = await utf8_client(store, account, b"IMAP4rev2")
        out = await rev2.cmd(b"c APPEND INBOX UTF8 (~{%d}" % len(UTF8_MESSAGE))
        assert out.startswith(b"c BAD")
        out = await client.ok(b"d STATUS INBOX (MESSAGES)")
        assert b"(MESSAGES 0)" in out

    imap(scenario)


def test_8bit_headers_need_utf8_enabled(imap: Runner) -> None:
    """RFC 6855 §4: a server announcing UTF8=ACCEPT refuses (NO) an APPEND with 8-bit header
    fields from a session that did not enable it; 8-bit body octets are not concerned."""
    async def scenario(store: Store, account: Account) -> None:
        legacy = await logged_in(store, account)
        out = await legacy.cmd(b"a APPEND INBOX {%d}\r\n%s" % (len(UTF8_MESSAGE), UTF8_MESSAGE))
        assert b"a NO [CANNOT]" in out
        body8 = message(1, body="Grüße")
        await legacy.ok(b"b APPEND INBOX {%d}\r\n%s" % (len(body8), body8))
        # MULTIAPPEND is all or nothing: the 8-bit header of the second refuses both.
        ascii_one = message(2)
        out = await legacy.cmd(b"c APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s"
                               % (len(ascii_one), ascii_one, len(UTF8_MESSAGE), UTF8_MESSAGE))
        assert b"c NO [CANNOT]" in out
        out = await legacy.ok(b"d STATUS INBOX (MESSAGES)")
        assert b"(MESSAGES 1)" in out
        # Once UTF-8 is enabled (UTF8=ACCEPT, or IMAP4rev2, RFC 9051 §6.3.12) a plain literal
        # with UTF-8 headers is taken too (docs/decisions.md).
        for mode in (b"UTF8=ACCEPT", b"IMAP4rev2"):
            client = await utf8_client(store, account, mode)
            await client.ok(b"f APPEND INBOX {%d}\r\n%s" % (len(UTF8_MESSAGE), UTF8_MESSAGE))
        out = await legacy.ok(b"g STATUS INBOX (MESSAGES)")
        assert b"(MESSAGES 3)" in out

    imap(scenario)


def test_header_scan_finds_the_end_across_chunks() -> None:
    from mailhouse.service.imap.appending import HeaderScan

    whole = b"Subject: x\r\n\r\n\xc3\xa9 body only\r\n"
    for cut in range(1, len(whole)):
        scan = HeaderScan()
        scan.feed(whole[:cut])
        scan.feed(whole[cut:])
        assert not scan.eight_bit, cut
    late = b"Subject: x\r\nX: " + b"a" * 100 + b"\xc3\xa9\r\n\r\nbody"
    for cut in range(1, len(late)):
        scan = HeaderScan()
        scan.feed(late[:cut])
        scan.feed(late[cut:])
        assert scan.eight_bit, cut
    bare = HeaderScan()
    bare.feed(b"Subject: x\n\n\xff")  # LF-only line ends
    assert not bare.eight_bit


# --- FETCH of RFC 6532 messages ----------------------------------------------------------------
def test_envelope_of_a_utf8_message_to_both_kinds_of_session(imap: Runner) -> None:
    """No downgrade (docs/decisions.md): the session that did not enable UTF-8 gets the UTF-8
    values as literals, never 8-bit octets in a quoted string; the one that did gets them
    quoted. Both parse the same with imapclient."""
    async def scenario(store: Store, account: Account) -> None:
        await put(store, account, UTF8_MESSAGE)
        views = []
        for client in (await logged_in(store, account), await utf8_client(store, account)):
            await client.ok(b"a SELECT INBOX")
            out = await client.ok(b"b FETCH 1 (ENVELOPE BODYSTRUCTURE)")
            views.append((out, fetched(out)))
        (legacy_out, legacy), (utf8_out, utf8) = views
        assert max(outside_literals(legacy_out)) < 0x80
        assert '"Grüße aus Köln"'.encode() in utf8_out
        assert legacy[b"ENVELOPE"] == utf8[b"ENVELOPE"]
        envelope = legacy[b"ENVELOPE"]
        assert envelope.subject == "Grüße aus Köln".encode()  # type: ignore[attr-defined]
        sender = envelope.from_[0]  # type: ignore[attr-defined]
        assert (sender.name, sender.mailbox, sender.host) == (
            "Jörg Müller".encode(), "jörg".encode(), "bücher.example".encode())

    imap(scenario)


# --- imaplib, behind the real transport --------------------------------------------------------
def test_imaplib_in_utf8_mode(tmp_path: Path) -> None:
    """imaplib's enable("UTF8=ACCEPT") switches it to UTF-8 (quoted arguments, UTF-8 LIST
    lines). Its APPEND in that mode (Python < 3.14) puts "UTF8 (" inside the literal instead of
    around a literal8, so the UTF8 data item is sent by hand on imaplib's connection."""
    def client(port: int, context: ssl.SSLContext) -> None:
        with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=10) as m:
            m.login("alice@example.org", "correct horse")
            assert b" UTF8=ACCEPT" in m.capability()[1][0]  # type: ignore[operator]
            typ, data = m.enable("UTF8=ACCEPT")
            assert typ == "OK" and m.utf8_enabled
            assert m.create('"Données/été"')[0] == "OK"
            typ, data = m.list('""', '"Donn*"')
            assert data == ['(\\Noselect \\HasChildren) "/" "Données"'.encode(),
                            '(\\HasNoChildren) "/" "Données/été"'.encode()]
            m.send(b'u1 APPEND "Donn\xc3\xa9es/\xc3\xa9t\xc3\xa9" UTF8 (~{%d+}\r\n%s)\r\n'
                   % (len(UTF8_MESSAGE), UTF8_MESSAGE))
            while not (line := m.readline()).startswith(b"u1 "):
                pass
            assert line.startswith(b"u1 OK [APPENDUID"), line
            typ, data = m.status('"Données/été"', "(MESSAGES)")
            assert data == ['"Données/été" (MESSAGES 1)'.encode()]
            typ, data = m.select('"Données/été"')
            assert typ == "OK" and data == [b"1"]
            typ, data = m.search(None, "SUBJECT", '"Köln"')
            assert data == [b"1"]
            typ, data = m.fetch("1", "(BODY.PEEK[])")
            assert data[0][1] == UTF8_MESSAGE  # type: ignore[index]
            typ, data = m.fetch("1", "(ENVELOPE)")
            assert '"Grüße aus Köln"'.encode() in data[0]  # type: ignore[operator]

    serve_and_run(tmp_path, client)
