"""SELECT, FETCH, STORE, SEARCH, COPY/MOVE, EXPUNGE, APPEND through the core and the service."""

from __future__ import annotations

import re

from mailhouse.model import Account
from mailhouse.store.base import Store
from tests.service.imap.conftest import Runner, logged_in, message, put
from tests.service.imap.harness import Client


def test_select_reports_the_mailbox(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        for n in range(3):
            await put(store, account, message(n))
        out = await client.ok(b"a SELECT INBOX")
        assert b"* 3 EXISTS\r\n" in out
        assert b"* 0 RECENT\r\n" in out
        assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", out)
        assert b"* OK [UIDNEXT 4]" in out
        assert b"a OK [READ-WRITE]" in out
        assert b"\\*)] Flags permitted" in out
    imap(scenario)


def test_fetch_flags_and_bodies(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await put(store, account, message(1, subject="Hello"), flags=("\\Flagged",))
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b FETCH 1 (UID FLAGS RFC822.SIZE ENVELOPE)")
        assert b"* 1 FETCH (UID 1 FLAGS (\\Flagged) RFC822.SIZE" in out
        assert b'"Hello"' in out
        out = await client.ok(b"c FETCH 1 BODY[]")
        assert b"Body 1" in out
        assert b"FLAGS (\\Flagged \\Seen)" in out
        out = await client.ok(b"d FETCH 1 FLAGS")
        assert b"\\Seen" in out
    imap(scenario)


def test_store_search_expunge(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        for n in range(5):
            await put(store, account, message(n, subject=f"s{n}"))
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b STORE 2:3 +FLAGS (\\Deleted)")
        assert b"* 2 FETCH (FLAGS (\\Deleted))" in out
        out = await client.ok(b"c SEARCH DELETED")
        assert b"* SEARCH 2 3\r\n" in out
        out = await client.ok(b"c2 SEARCH SUBJECT s4")
        assert b"* SEARCH 5\r\n" in out
        out = await client.ok(b"d EXPUNGE")
        assert b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n" in out
        out = await client.ok(b"e UID SEARCH ALL")
        assert b"* SEARCH 1 4 5\r\n" in out
    imap(scenario)


def test_copy_move_append(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await put(store, account, message(1))
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b COPY 1 Archive")
        assert re.search(rb"b OK \[COPYUID \d+ 1 1\]", out)
        out = await client.ok(b"c MOVE 1 Trash")
        assert re.search(rb"\* OK \[COPYUID \d+ 1 1\]", out)
        assert b"* 1 EXPUNGE" in out
        out = await client.raw(b"d APPEND INBOX (\\Seen) {12}\r\n")
        assert out.startswith(b"+ ")
        out = await client.raw(b"Hello there!\r\n")
        assert re.search(rb"d OK \[APPENDUID \d+ 2\]", out), out
        assert b"* 1 EXISTS" in out
        out = await client.cmd(b"e COPY 1 Nowhere")
        assert b"e NO [TRYCREATE]" in out
    imap(scenario)


def test_two_sessions_see_each_other(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a, b = Client(store, account), Client(store, account)
        await a.login()
        await b.login()
        await put(store, account, message(1))
        await a.ok(b"a SELECT INBOX")
        await b.ok(b"a SELECT INBOX")
        await put(store, account, message(2))
        out = await a.ok(b"b NOOP")
        assert b"* 2 EXISTS" in out
        await b.ok(b"b STORE 1 +FLAGS (\\Deleted)")
        await b.ok(b"c EXPUNGE")
        out = await a.cmd(b"c FETCH 1:* FLAGS")  # no EXPUNGE during FETCH (RFC 9051 §7.5.1)
        assert b"EXPUNGE\r\n" not in out
        assert b"* 2 FETCH" in out and b"c NO [EXPUNGEISSUED]" in out
        out = await a.ok(b"d NOOP")
        assert b"* 1 EXPUNGE" in out
    imap(scenario)


def test_list_and_status(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.ok(b'a LIST "" "*"')
        assert b'* LIST (\\HasNoChildren) "/" INBOX' in out
        assert b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in out
        await client.ok(b"b CREATE Work/Projects")
        out = await client.ok(b'c LIST "" "%"')
        assert b'* LIST (\\Noselect \\HasChildren) "/" Work' in out
        assert b"Projects" not in out
        out = await client.ok(b"d STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE)")
        assert b"* STATUS INBOX (MESSAGES 0 UIDNEXT 1 UNSEEN 0 SIZE 0)" in out
        out = await client.ok(b'e LIST "" "*" RETURN (STATUS (MESSAGES))')
        assert b"* STATUS Sent (MESSAGES 0)" in out
    imap(scenario)
