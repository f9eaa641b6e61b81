"""The IMAP service behind the real transport (net/imap.py) on a loopback socket, driven by
Python's imaplib and by imapclient: what a client library sends, parsed the way it parses."""

from __future__ import annotations

import asyncio
import imaplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import imapclient
from argon2 import PasswordHasher

from mailhouse.net.imap import ImapEndpoint
from mailhouse.net.listener import ConnectionLimits, ConnectionTracker
from mailhouse.net.tls import ensure_self_signed, server_context
from mailhouse.proto.imap.server import ImapServerConfig
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.imap import ENABLEABLE, ImapMailService, ImapSettings, capabilities
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store.base import Store
from mailhouse.store.memory import MemoryStore
from tests.service.imap.conftest import message, put

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
T = TypeVar("T")
Client = Callable[[int, ssl.SSLContext], None]


def serve_and_run(tmp_path: Path, client: Callable[[int, ssl.SSLContext], None],
                  prepare: Callable[[Store], object] | None = None) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        accounts = Accounts(store, Passwords(CHEAP))
        await accounts.add_domain("example.org")
        account = await accounts.add_user("alice@example.org", "correct horse")
        for n in range(5):
            await put(store, account, message(n, subject=f"Subject {n}"))
        guard = LoginGuard(accounts, LoginThrottle(5, 60.0), delay=0.0)
        settings = ImapSettings()
        service = ImapMailService(store, guard, None, settings)
        cert, key = ensure_self_signed(tmp_path / "tls", "imap.example.test")
        core = ImapServerConfig(hostname="imap.example.test", capabilities=capabilities(settings),
                                enableable=ENABLEABLE)
        pool = ConnectionTracker(10).pool("imap", ConnectionLimits(10, 10))
        tls = server_context(cert, key)
        endpoint = ImapEndpoint(core, service, pool, tls, idle_timeout=1800, lifetime=3600,
                                implicit_tls=True)
        server = await asyncio.get_running_loop().create_server(endpoint.factory, "127.0.0.1", 0,
                                                                ssl=tls)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(asyncio.to_thread(client, port, context), 60)
        finally:
            server.close()
            await store.close()

    asyncio.run(main())


def test_imaplib_session(tmp_path: Path) -> None:
    def client(port: int, context: ssl.SSLContext) -> None:
        with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=10) as m:
            m.login("alice@example.org", "correct horse")
            typ, data = m.select("INBOX")
            assert typ == "OK" and data == [b"5"]
            typ, data = m.uid("SEARCH", "SUBJECT", '"Subject 3"')
            assert data == [b"4"]
            typ, data = m.fetch("1:2", "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            assert b"Subject: Subject 0" in data[0][1]  # type: ignore[index]
            typ, data = m.fetch("3", "(RFC822)")
            assert b"Body 2" in data[0][1]  # type: ignore[index]
            typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
            assert typ == "OK"
            typ, data = m.expunge()
            assert data == [b"1"]
            typ, data = m.copy("1:2", "Archive")
            assert typ == "OK"
            typ, data = m.append("Drafts", "(\\Draft)", None, message(9))
            assert typ == "OK" and b"APPENDUID" in data[0]  # type: ignore[operator]
            typ, data = m.list()
            assert any(b"Drafts" in line for line in data)  # type: ignore[operator]
            typ, data = m.status("Archive", "(MESSAGES UNSEEN)")
            assert b"MESSAGES 2" in data[0]  # type: ignore[operator]
            typ, data = m.sort("(REVERSE SUBJECT)", "UTF-8", "ALL")
            assert data == [b"4 3 2 1"]
            typ, data = m.thread("REFERENCES", "UTF-8", "ALL")
            assert typ == "OK"
            m.close()

    serve_and_run(tmp_path, client)


def test_imapclient_session(tmp_path: Path) -> None:
    def client(port: int, context: ssl.SSLContext) -> None:
        with imapclient.IMAPClient("127.0.0.1", port, ssl=True, ssl_context=context,
                                   timeout=10) as c:
            c.login("alice@example.org", "correct horse")
            assert b"MOVE" in c.capabilities() and b"CONDSTORE" in c.capabilities()
            c.enable("CONDSTORE")
            info = c.select_folder("INBOX")
            assert info[b"EXISTS"] == 5 and info[b"HIGHESTMODSEQ"] >= 1
            modseq = info[b"HIGHESTMODSEQ"]
            messages = c.search(["SUBJECT", "Subject 1"])
            assert messages == [2]
            c.add_flags([2], [b"\\Flagged", b"$Important"])
            changed = c.fetch([1, 2, 3, 4, 5], ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
            assert list(changed) == [2]
            assert b"$Important" in changed[2][b"FLAGS"]
            data = c.fetch([1], ["ENVELOPE", "BODYSTRUCTURE", "INTERNALDATE", "RFC822.SIZE"])
            envelope = data[1][b"ENVELOPE"]
            assert envelope.subject == b"Subject 0"
            assert data[1][b"BODYSTRUCTURE"][0] == b"text"
            c.move([1], "Trash")
            assert c.select_folder("Trash")[b"EXISTS"] == 1
            c.create_folder("Projects/2026")
            folders = [name for _, _, name in c.list_folders()]
            assert "Projects/2026" in folders and "Projects" in folders
            c.rename_folder("Projects", "Old")
            assert c.folder_exists("Old/2026")
            c.subscribe_folder("Old/2026")
            assert "Old/2026" in [name for _, _, name in c.list_sub_folders()]
            status = c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UNSEEN"])
            assert status[b"MESSAGES"] == 4 and status[b"UIDNEXT"] == 6
            c.select_folder("INBOX")
            c.idle()
            responses = c.idle_check(timeout=0.2)
            c.idle_done()
            assert responses == []
            assert c.get_quota_root("INBOX")[0].quota_roots == []
            c.logout()

    serve_and_run(tmp_path, client)
