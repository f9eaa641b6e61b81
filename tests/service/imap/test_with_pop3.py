"""A POP3 session and IMAP sessions on one account at once: POP3's deletions (at QUIT, RFC 1939
§6) reach the IMAP session as EXPUNGE at the next point it may be told; IMAP's expunges make
POP3's RETR of that message fail cleanly; neither locks the other out."""

from __future__ import annotations

from argon2 import PasswordHasher

from mailhouse.errors import MailError
from mailhouse.model import Account
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.pop3 import Pop3Service
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store.base import Store
from tests.service.imap.conftest import Runner, logged_in, message, put

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_pop3_and_imap_on_one_account(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        accounts = Accounts(store, Passwords(CHEAP))
        await accounts.set_password(account.address, "pop secret")
        for n in range(3):
            await put(store, account, message(n))
        client = await logged_in(store, account)
        await client.ok(b"a SELECT INBOX")
        pop3 = Pop3Service(store, LoginGuard(accounts, LoginThrottle(5, 60.0), delay=0.0))
        result, maildrop = await pop3.login("127.0.0.1", account.address, "pop secret")
        assert maildrop is not None, result
        # IMAP removes message 3 while POP3 holds its snapshot.
        await client.ok(b"b STORE 3 +FLAGS (\\Deleted)")
        await client.ok(b"c EXPUNGE")
        try:
            chunks = [c async for c in maildrop.read(2)]
        except MailError:
            chunks = []
        assert chunks == []
        await maildrop.commit([0])  # POP3 DELE 1, QUIT (0-based here)
        maildrop.release()
        out = await client.cmd(b"d FETCH 1:* (UID)")  # not during FETCH (RFC 9051 §7.5.1)
        assert b"EXPUNGE\r\n" not in out
        assert b"* 2 FETCH (UID 2)" in out and b"d NO [EXPUNGEISSUED]" in out
        out = await client.ok(b"e NOOP")
        assert b"* 1 EXPUNGE\r\n" in out
        out = await client.ok(b"f UID SEARCH ALL")
        assert b"* SEARCH 2\r\n" in out

    imap(scenario)
