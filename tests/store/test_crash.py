"""kill -9 in the middle of a delivery load loses nothing that was acknowledged (RFC 5321 §6.1,
security.md checklist items 18 and 20) and leaves no half-written blob behind."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from mailhouse.store import open_store
from tests.store.conftest import read_all
from tests.store.crash_child import body, number_of

REPO = Path(__file__).resolve().parents[2]
ACKNOWLEDGED_BEFORE_KILL = 150
ROUNDS = 2


async def run_until_killed(data_dir: Path, account_id: int, first: int) -> set[int]:
    """Start the child, let it acknowledge some deliveries, SIGKILL it; returns what it acked."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.store.crash_child",
        str(data_dir),
        str(account_id),
        str(first),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    acknowledged: set[int] = set()
    try:
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
        while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "the child died on its own"
            acknowledged.add(int(line))
    finally:
        process.send_signal(signal.SIGKILL)
        rest = await asyncio.wait_for(process.stdout.read(), 30)  # acked before the kill landed
        await process.wait()
    acknowledged.update(int(line) for line in rest.split())
    assert process.returncode == -signal.SIGKILL
    return acknowledged


async def test_sigkill_loses_no_acknowledged_delivery(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    await store.open()
    account = await store.add_account("alice@example.org", "h")
    await store.close()

    acknowledged: set[int] = set()
    for round_number in range(ROUNDS):  # the second child opens what the first one left
        acknowledged |= await run_until_killed(data_dir, account.id, round_number * 1_000_000)

    store = open_store(data_dir)
    await store.open()  # reaps the blobs of deliveries that were in flight
    try:
        inbox = next(m for m in await store.list_mailboxes(account.id) if m.name == "INBOX")
        messages = await store.list_messages(inbox.id)
        stored: dict[int, bytes] = {}
        for message in messages:
            data = await read_all(store, message)
            assert len(data) == message.size
            stored[number_of(data)] = data
        missing = acknowledged - stored.keys()
        assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
        for number, data in stored.items():  # also what committed without being reported
            assert data == body(number), f"message {number} is corrupt"
        uids = [m.uid for m in messages]
        assert uids == sorted(set(uids))
        assert inbox.message_count == len(messages)
    finally:
        await store.close()

    with sqlite3.connect(data_dir / "mailhouse.db") as conn:
        referenced = {row[0] for row in conn.execute("SELECT id FROM blobs")}
        assert {row[0] for row in conn.execute("SELECT blob_id FROM messages")} == referenced
    on_disk = {f"{p.parent.name}/{p.name}" for p in (data_dir / "blobs").glob("*/*")}
    assert on_disk == referenced, "half-written or orphaned blob files survived the reopen"


pytestmark = pytest.mark.timeout(120)
