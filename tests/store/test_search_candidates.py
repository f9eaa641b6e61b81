"""Store.search_candidates: the messages whose stored search fields may contain every needle,
a superset of the true matches (the contract over every store), found without decoding."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailhouse.store import open_store
from mailhouse.store.base import DeliveryTarget, MailboxInfo, Store
from tests.store.conftest import deliver_bytes


def _message(sender: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n"
            .encode())


async def _filled(store: Store) -> MailboxInfo:
    account = await store.add_account("alice@example.org", "h")
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    for sender, subject in [("Ada Lovelace <ada@example.net>", "Quarterly report"),
                            ("Bob <bob@example.net>", "=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Köln"),
                            ("Carol <carol@example.net>", 'Say "hi"'),
                            ("Ada Lovelace <ada@example.net>", "Lunch")]:
        await deliver_bytes(store, _message(sender, subject), [DeliveryTarget(inbox.account_id)])
    return inbox


async def test_candidates_hold_every_match(store: Store) -> None:
    inbox = await _filled(store)
    assert await store.search_candidates(inbox.id, ["lovelace"]) == {1, 4}
    assert await store.search_candidates(inbox.id, ["lovelace", "quarterly"]) == {1}
    assert await store.search_candidates(inbox.id, ["grüsse", "köln"]) == {2}  # case-folded
    assert await store.search_candidates(inbox.id, ["nobody"]) == set()
    # A needle the encoding would escape narrows nothing (None), or only by the others.
    assert await store.search_candidates(inbox.id, ['"hi"']) is None
    assert await store.search_candidates(inbox.id, ['"hi"', "carol"]) == {3}
    assert await store.search_candidates(inbox.id, []) is None
    assert await store.search_candidates(987654, ["ada"]) == set()


async def test_rows_without_current_search_fields_stay_candidates(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    await store.open()
    try:
        inbox = await _filled(store)
        with sqlite3.connect(tmp_path / "data" / "mailhouse.db") as conn:
            conn.execute("UPDATE message_search SET search = NULL WHERE uid = 1")  # before v9
            conn.execute("UPDATE message_search SET search = ? WHERE uid = 2", (b"[0, []]",))
        assert await store.search_candidates(inbox.id, ["zeppelin"]) == {1, 2}
    finally:
        await store.close()
