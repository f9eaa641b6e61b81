"""The announced extensions, each through the core and the service (RFC examples where they
fit): CONDSTORE/QRESYNC, ESEARCH/SEARCHRES, SORT/THREAD, MULTIAPPEND, LIST-EXTENDED,
SPECIAL-USE, QUOTA, BINARY, IMAP4rev2 differences, UIDPLUS."""

from __future__ import annotations

import re

from mailhouse.model import Account
from mailhouse.service.imap import CAPABILITIES
from mailhouse.store.base import Store
from tests.service.imap.conftest import Runner, logged_in, message, put


def test_capabilities_after_login(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.ok(b"a CAPABILITY")
        for cap in CAPABILITIES:
            assert b" " + cap.encode() in out

    imap(scenario)


def test_condstore_fetch_and_conditional_store(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        for n in range(3):
            await put(store, account, message(n))
        out = await client.ok(b"a SELECT INBOX (CONDSTORE)")
        highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1))  # type: ignore[union-attr]
        out = await client.ok(b"b STORE 2 +FLAGS (\\Flagged)")
        assert re.search(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", out)
        out = await client.ok(b"c FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest)
        assert b"* 2 FETCH" in out and b"* 1 FETCH" not in out and b"MODSEQ" in out
        out = await client.ok(b"d STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % highest)
        assert b"d OK [MODIFIED 2]" in out
        out = await client.ok(b"e SEARCH MODSEQ %d" % (highest + 1))
        assert re.search(rb"\* SEARCH 1 2 3 \(MODSEQ \d+\)", out)

    imap(scenario)


def test_qresync_select_reports_what_was_missed(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        first = await logged_in(store, account)
        for n in range(4):
            await put(store, account, message(n))
        out = await first.ok(b"a SELECT INBOX")
        validity = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))  # type: ignore[union-attr]
        highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1))  # type: ignore[union-attr]
        await first.ok(b"b STORE 1 +FLAGS (\\Deleted \\Answered)")
        await first.ok(b"c EXPUNGE")
        await first.ok(b"d STORE 1 +FLAGS (\\Flagged)")
        phone = await logged_in(store, account)
        await phone.ok(b"e ENABLE QRESYNC")
        out = await phone.ok(b"f SELECT INBOX (QRESYNC (%d %d 1:4))" % (validity, highest))
        assert b"* VANISHED (EARLIER) 1\r\n" in out
        assert re.search(rb"\* 1 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", out)
        # QRESYNC on: expunges are VANISHED (RFC 7162 §3.2.10).
        await phone.ok(b"g STORE 1 +FLAGS (\\Deleted)")
        out = await phone.ok(b"h EXPUNGE")
        assert b"* VANISHED 2\r\n" in out
        out = await phone.cmd(b"i SELECT INBOX (QRESYNC (1 1))")
        assert b"i OK" in out  # a stale UIDVALIDITY: a plain SELECT (RFC 7162 §3.2.5)
        assert b"VANISHED" not in out

    imap(scenario)


def test_esearch_and_searchres(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        for n in range(6):
            await put(store, account, message(n), flags=("\\Seen",) if n % 2 else ())
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
        assert b'* ESEARCH (TAG "b") MIN 1 MAX 5 ALL 1,3,5 COUNT 3\r\n' in out
        out = await client.ok(b"c UID SEARCH RETURN () SEEN")
        assert b'* ESEARCH (TAG "c") UID ALL 2,4,6\r\n' in out
        out = await client.ok(b"d SEARCH RETURN (SAVE) SEEN")
        assert b"ESEARCH" not in out
        out = await client.ok(b"e FETCH $ (UID)")
        assert b"* 2 FETCH (UID 2)" in out and b"* 6 FETCH (UID 6)" in out
        assert b"* 1 FETCH" not in out
        out = await client.ok(b"f SEARCH RETURN (COUNT) DELETED")
        assert b'* ESEARCH (TAG "f") COUNT 0\r\n' in out

    imap(scenario)


def test_sort_and_thread(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await put(store, account, message(3, subject="banana"))
        await put(store, account, message(1, subject="apple"))
        await put(store, account, message(2, subject="Re: apple",
                                          extra="In-Reply-To: <m1@example.net>\r\n"))
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b SORT (SUBJECT) UTF-8 ALL")
        assert b"* SORT 2 3 1\r\n" in out
        out = await client.ok(b"c UID SORT (REVERSE DATE) UTF-8 ALL")
        assert b"* SORT 1 3 2\r\n" in out
        out = await client.ok(b"d THREAD REFERENCES UTF-8 ALL")
        assert b"* THREAD (2 3)(1)\r\n" in out
        out = await client.ok(b"e THREAD ORDEREDSUBJECT UTF-8 ALL")
        assert b"* THREAD (2 3)(1)\r\n" in out

    imap(scenario)


def test_multiappend_is_all_or_nothing(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.raw(b"a APPEND Drafts {5+}\r\nfirst (\\Seen) {6+}\r\nsecond\r\n")
        assert re.search(rb"a OK \[APPENDUID \d+ 1:2\]", out), out
        await store.set_quota(account.address, 12)
        out = await client.raw(b"b APPEND Drafts {1+}\r\nx {20+}\r\n" + b"y" * 20 + b"\r\n")
        assert b"b NO [OVERQUOTA]" in out
        out = await client.ok(b"c STATUS Drafts (MESSAGES)")
        assert b"(MESSAGES 2)" in out
        out = await client.raw(b"d APPEND Nowhere {1+}\r\nx\r\n")
        assert b"d NO [TRYCREATE]" in out

    imap(scenario)


def test_list_extended_special_use_and_subscriptions(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await client.ok(b"a CREATE Lists/Python")
        await client.ok(b"b SUBSCRIBE Lists/Python")
        await client.ok(b"b2 SUBSCRIBE Gone")
        out = await client.ok(b'c LIST (SPECIAL-USE) "" "*"')
        assert b"\\Sent" in out and b"INBOX" not in out
        out = await client.ok(b'd LIST (SUBSCRIBED) "" "*"')
        assert b'* LIST (\\HasNoChildren \\Subscribed) "/" Lists/Python' in out
        assert b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" Gone' in out
        out = await client.ok(b'e LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        assert b'"/" Lists ("CHILDINFO" ("SUBSCRIBED"))' in out
        out = await client.ok(b'f LSUB "" "*"')
        assert b'* LSUB () "/" Lists/Python' in out
        out = await client.ok(b'g LIST "" "*" RETURN (CHILDREN SUBSCRIBED)')
        assert b'* LIST (\\Noselect \\HasChildren) "/" Lists' in out
        out = await client.ok(b"h CREATE Later (USE (\\Archive))")
        out = await client.cmd(b"i CREATE Bad (USE (\\Important))")
        assert b"i NO [USEATTR]" in out
        out = await client.cmd(b"j CREATE INBOX")
        assert b"j NO [ALREADYEXISTS]" in out
        out = await client.cmd(b"k DELETE INBOX")
        assert b"k NO [CANNOT]" in out
        await client.ok(b"l RENAME Lists Groups")
        out = await client.ok(b'm LIST "" "Groups/*"')
        assert b"Groups/Python" in out
        out = await client.cmd(b"n DELETE Nothing")
        assert b"n NO [NONEXISTENT]" in out
        out = await client.ok(b'o LIST "" ""')
        assert b'* LIST (\\Noselect) "/" ""' in out

    imap(scenario)


def test_mailbox_names_travel_as_modified_utf7_or_utf8(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await client.ok(b"a CREATE &AOk-t&AOk-")  # "été"
        out = await client.ok(b'b LIST "" "*"')
        assert b'"/" &AOk-t&AOk-' in out
        utf8 = await logged_in(store, account)
        await utf8.ok(b"c ENABLE UTF8=ACCEPT")
        out = await utf8.ok(b'd LIST "" "*"')
        assert '"/" "été"'.encode() in out

    imap(scenario)


def test_quota(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.ok(b"a GETQUOTAROOT INBOX")
        assert b"* QUOTAROOT INBOX\r\n" in out
        await store.set_quota(account.address, 10 * 1024)
        await put(store, account, message(1))
        out = await client.ok(b"b GETQUOTAROOT INBOX")
        assert b'* QUOTAROOT INBOX ""' in out
        assert b'* QUOTA "" (STORAGE 1 10)' in out
        out = await client.ok(b'c GETQUOTA ""')
        assert b'* QUOTA "" (STORAGE 1 10)' in out
        out = await client.cmd(b'd SETQUOTA "" (STORAGE 99)')
        assert b"d NO [NOPERM]" in out

    imap(scenario)


def test_binary_fetch(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        body = (b"From: a@example.net\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: multipart/mixed; boundary=xx\r\n\r\n"
                b"--xx\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                b"--xx\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--xx--\r\n")
        await put(store, account, body)
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])")
        assert b"BINARY.SIZE[2] 4" in out
        assert b"BINARY[2] ~{4}\r\n\x00\x01\x02\x03" in out
        assert b"\\Seen" not in out
        out = await client.ok(b"c FETCH 1 BINARY[1]")
        assert b"BINARY[1] {2}\r\nhi" in out and b"\\Seen" in out

    imap(scenario)


def test_imap4rev2_differences(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await put(store, account, message(1))
        await client.ok(b"a ENABLE IMAP4rev2")
        out = await client.ok(b"b SELECT INBOX")
        assert b"RECENT" not in out
        assert b'* LIST () "/" INBOX' in out
        out = await client.ok(b"c SEARCH ALL")
        assert b'* ESEARCH (TAG "c") ALL 1\r\n' in out

    imap(scenario)


def test_examine_is_read_only(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await put(store, account, message(1))
        out = await client.ok(b"a EXAMINE INBOX")
        assert b"a OK [READ-ONLY]" in out
        out = await client.ok(b"b FETCH 1 BODY[TEXT]")
        assert b"\\Seen" not in out
        out = await client.cmd(b"c STORE 1 +FLAGS (\\Seen)")
        assert b"c NO [READ-ONLY]" in out
        out = await client.cmd(b"d EXPUNGE")
        assert b"d NO [READ-ONLY]" in out

    imap(scenario)


def test_fetch_sections_and_errors(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await put(store, account, message(1, subject="Fields"))
        await client.ok(b"a SELECT INBOX")
        out = await client.ok(b"b FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])")
        assert b"BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: Fields\r\n\r\n" in out
        out = await client.ok(b"c FETCH 1 (BODY.PEEK[TEXT]<0.4>)")
        assert b"BODY[TEXT]<0> {4}\r\nBody" in out
        out = await client.cmd(b"d FETCH 5 FLAGS")
        assert b"d BAD" in out
        out = await client.ok(b"e UID FETCH 5:9 FLAGS")
        assert b"FETCH (" not in out
        out = await client.ok(b"f UID FETCH * (UID)")
        assert b"* 1 FETCH (UID 1)" in out

    imap(scenario)


def test_close_expunges_silently_unselect_does_not(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        for n in range(3):
            await put(store, account, message(n), flags=("\\Deleted",) if n == 0 else ())
        await client.ok(b"a SELECT INBOX")
        await client.ok(b"b UNSELECT")
        out = await client.ok(b"c STATUS INBOX (MESSAGES DELETED)")
        assert b"(MESSAGES 3 DELETED 1)" in out
        await client.ok(b"d SELECT INBOX")
        await client.ok(b"e STORE 2 +FLAGS (\\Deleted)")
        out = await client.ok(b"f UID EXPUNGE 2")
        assert b"* 2 EXPUNGE" in out
        out = await client.ok(b"g CLOSE")
        assert b"EXPUNGE" not in out
        out = await client.ok(b"h STATUS INBOX (MESSAGES)")
        assert b"(MESSAGES 1)" in out

    imap(scenario)
