"""Fuzz target: the IMAP session core and the mailbox service together, over an in-memory
store holding a few messages (one MIME, one with a base64 part), two sessions on one account.

Input: flags (1 byte: bit 0 token mode, bit 1 the second session gets the stream's second
half, bit 2 QRESYNC enabled first), then the stream. Contract: the service never raises (a bug
would be answered NO [SERVERBUG] by the transport: here it propagates), every line out is
untagged, a continuation or a tagged status, and sequence numbers stay consistent (EXISTS
never shrinks without EXPUNGE/VANISHED in between, checked by the session's own view)."""

from __future__ import annotations

import asyncio
import re

from fuzz.input import FuzzInput, expand, header
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.server import ImapServerConfig
from mailhouse.service.imap import CAPABILITIES, ENABLEABLE, ImapSettings
from mailhouse.store.memory import MemoryStore
from tests.service.imap.harness import Client

WORDS = (
    b"a ", b"b ", b"SELECT ", b"EXAMINE ", b"INBOX", b"Trash", b"Work/Sub", b"NOOP", b"\r\n",
    b"FETCH ", b"UID ", b"1:*", b"2", b"*", b"$", b"3:1", b"(FLAGS UID)", b"BODY[]",
    b"(BODY.PEEK[1.MIME] BINARY[2] BINARY.SIZE[2] BODYSTRUCTURE ENVELOPE)", b"BODY[TEXT]<2.5>",
    b"STORE ", b"+FLAGS (\\Deleted)", b"-FLAGS.SILENT (\\Seen $kw)", b"FLAGS ()",
    b"(UNCHANGEDSINCE 2) ", b"(CHANGEDSINCE 1 VANISHED)", b"EXPUNGE", b"CLOSE", b"UNSELECT",
    b"SEARCH ", b"RETURN (SAVE MIN COUNT) ", b"OR SEEN (FROM bob) NOT 2", b"TEXT body",
    b"HEADER Subject x", b"MODSEQ 1", b"SORT (REVERSE DATE SUBJECT) UTF-8 ALL",
    b"THREAD REFERENCES UTF-8 ALL", b"COPY ", b"MOVE ", b"CREATE ", b"DELETE ", b"RENAME ",
    b"LIST ", b'"" "*"', b'(SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (STATUS (MESSAGES SIZE))',
    b"LSUB ", b"STATUS ", b"(MESSAGES UIDNEXT UNSEEN DELETED SIZE HIGHESTMODSEQ)",
    b"SUBSCRIBE ", b"APPEND ", b"{5}\r\nhello", b"{3+}\r\nabc", b"GETQUOTAROOT ", b"IDLE",
    b"DONE", b"ENABLE QRESYNC", b"(QRESYNC (1 1 1:5))", b" ", b"ENABLE UTF8=ACCEPT",
    b"UTF8 (~{5}\r\nhello)", b'"\xc3\xa9t\xc3\xa9"', b"Subject: \xc3\xa9\r\n\r\n",
    b"RETURN (UPDATE PARTIAL 1:2) ", b"SORT RETURN (MIN ALL UPDATE) (SUBJECT) UTF-8 UNSEEN",
    b'CANCELUPDATE "a" "b"',
)
_STATUS = re.compile(rb"(\* |\+ |[^ ]+ (OK|NO|BAD) )")
_CONFIG = ImapServerConfig(hostname="fuzz.example", capabilities=CAPABILITIES,
                           enableable=ENABLEABLE, max_errors=1000,
                           parser=ParserConfig(max_line_length=1024, max_literal_size=256,
                                               max_append_size=1024, max_depth=8))
_MESSAGES = (
    b"From: Bob <bob@example.net>\r\nSubject: one\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n",
    b"From: a@example.net\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
    b"Subject: Re: one\r\nIn-Reply-To: <1@x>\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n\xc3\xa9t\xc3\xa9\r\n",
)


async def _run(streams: list[bytes], qresync: bool) -> list[bytes]:
    store = MemoryStore()
    await store.open()
    await store.add_domain("example.org")
    account = await store.add_account("alice@example.org", "x")
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    for i, data in enumerate(_MESSAGES):
        spool = store.new_spool()
        await spool.write(data)
        await store.append(inbox.id, spool, ("\\Seen",) if i else ())
    outs = []
    clients = [Client(store, account, settings=ImapSettings(append_limit=1024, fetch_batch=2),
                      config=_CONFIG) for _ in streams]
    for client in clients:
        await client.login()
        if qresync:
            await client.cmd(b"q ENABLE QRESYNC")
    for client, stream in zip(clients, streams, strict=True):
        outs.append(await client.raw(stream))
    for client in clients:
        outs.append(await client.cmd(b"z NOOP"))
        client.session.close()
    await store.close()
    return outs


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    flags = source.byte()
    stream = source.rest()
    if flags & 1:
        stream = expand(stream, WORDS)
    streams = [stream[:len(stream) // 2], stream[len(stream) // 2:]] if flags & 2 else [stream]
    for out in asyncio.run(_run(streams, bool(flags & 4))):
        for line in out.split(b"\r\n")[:-1]:
            if line.startswith((b"* ", b"+ ")) or not line:
                continue
            # A literal's octets can hold anything; lines that are not a status follow one.
            assert _STATUS.match(line) or b"{" in out, line


SESSIONS = (
    b"a SELECT INBOX\r\nb FETCH 1:* (FLAGS UID BODYSTRUCTURE ENVELOPE BINARY[2])\r\n"
    b"c STORE 1 +FLAGS (\\Deleted)\r\nd EXPUNGE\r\ne SEARCH TEXT body\r\n"
    b"f SORT (SUBJECT) UTF-8 ALL\r\ng THREAD REFERENCES UTF-8 ALL\r\nh MOVE 1 Trash\r\n",
    b'a CREATE Work/Sub\r\nb LIST "" "*" RETURN (STATUS (MESSAGES))\r\nc RENAME Work Old\r\n'
    b"d APPEND Old/Sub {5}\r\nhello\r\ne STATUS Old/Sub (MESSAGES SIZE)\r\nf DELETE Old/Sub\r\n",
    b"a EXAMINE INBOX\r\nb UID SEARCH RETURN (SAVE) SEEN\r\nc UID FETCH $ BODY[]\r\n"
    b"d UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n",
    b"a SELECT INBOX\r\nb UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN\r\n"
    b"c SEARCH RETURN (UPDATE PARTIAL 1:2) NOT DELETED\r\nd STORE 1:* +FLAGS (\\Seen)\r\n"
    b"e STORE 1 +FLAGS (\\Deleted)\r\nf EXPUNGE\r\ng APPEND INBOX {5}\r\nhello\r\n"
    b'h CANCELUPDATE "b"\r\ni NOOP\r\n',
)


def seeds() -> list[bytes]:
    out = [header(flags) + session for session in SESSIONS for flags in (0, 2, 4, 6)]
    out.append(header(3) + bytes(range(len(WORDS))))
    return out
