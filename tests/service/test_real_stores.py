"""The services against the real store implementations (the fakes elsewhere keep most tests
fast; this makes sure the fakes did not hide a difference that matters)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.mailfiles import export_maildir, import_mbox
from mailhouse.store import STORE_KINDS, open_store

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
MESSAGES = [b"Subject: one\n\n>From escaped\n", b"Subject: two\n\nends blank\n\n"]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_accounts_and_mail_round_trip(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        store = open_store(tmp_path / "data", kind)
        await store.open()
        try:
            accounts = Accounts(store, Passwords(CHEAP))
            await accounts.add_domain("Example.TEST")
            alice = await accounts.add_user("Alice@example.test", "pw")
            await accounts.add_user("bob@example.test", "pw")
            await accounts.add_alias("team@example.test", ["alice@example.test",
                                                           "bob@example.test"])
            removal = await accounts.remove_user("bob@example.test")
            assert removal.aliases_changed == ("team@example.test",)
            assert await accounts.list_aliases() == [("team@example.test",
                                                      ("alice@example.test",))]
            assert await accounts.authenticate("ALICE@example.test", "pw") == alice
            assert await accounts.authenticate("bob@example.test", "pw") is None

            mbox = tmp_path / "in.mbox"
            mbox.write_bytes(b"".join(
                b"From x Thu Jan  1 00:00:0%d 2004\n" % i
                + m.replace(b"\n>From", b"\n>>From") + b"\n"
                for i, m in enumerate(MESSAGES)))
            report = await import_mbox(store, alice, mbox)
            assert (report.messages, report.problems) == (2, [])
            report = await export_maildir(store, alice, tmp_path / "out",
                                          hostname="mx.example.test")
            assert report.problems == []
            exported = sorted((tmp_path / "out" / "cur").iterdir())
            assert [p.read_bytes() for p in exported] == MESSAGES
            assert [p.stat().st_mtime for p in exported] == [1072915200.0, 1072915201.0]
        finally:
            await store.close()

    asyncio.run(scenario())
