"""service/queue_admin.py: the queue actions every face (CLI, admin API, web admin) shares."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailhouse.service.queue_admin import NoSuchMessage, QueueAdmin
from mailhouse.store import open_store
from mailhouse.store.base import QueueRequest, RecipientStatus, RecipientUpdate

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


async def _scenario(data_dir: Path) -> None:
    store = open_store(data_dir)
    await store.open()
    try:
        spool = store.new_spool()
        await spool.write(MESSAGE)
        await store.deliver(spool, [], queue=QueueRequest(
            "a@example.org", ("b@remote.test", "c@remote.test"), body_8bit=False,
            not_before=2e9))
        (queued,) = await store.queue_list()
        await store.queue_update(queued.id, [RecipientUpdate(
            "c@remote.test", RecipientStatus.DELIVERED, 0.0, "250 ok")])
        queue = QueueAdmin(store, actor="operator:alice", clock=lambda: 1e9)

        assert [m.id for m in await queue.list()] == [queued.id]
        assert b"".join([c async for c in queue.content(queued.id)]) == MESSAGE
        assert await queue.retry(queued.id) == 1  # only the pending recipient
        assert await queue.flush() == 1
        assert await queue.bounce(queued.id) == 1
        bounced = await queue.get(queued.id)  # asked: the queue worker carries it out
        assert bounced.bounce_requested
        assert {r.address: r.status for r in bounced.recipients} == {
            "b@remote.test": RecipientStatus.PENDING, "c@remote.test": RecipientStatus.DELIVERED}
        await queue.delete(queued.id)
        for action in (queue.get, queue.retry, queue.delete, queue.bounce):
            with pytest.raises(NoSuchMessage):
                await action(queued.id)
        with pytest.raises(NoSuchMessage):
            [c async for c in queue.content(queued.id)]
        audit = await store.list_audit(10)
        assert [(e.actor, e.action, e.detail) for e in reversed(audit)] == [
            ("operator:alice", "queue.retry", str(queued.id)),
            ("operator:alice", "queue.flush", "1 recipients"),
            ("operator:alice", "queue.bounce", str(queued.id)),
            ("operator:alice", "queue.delete", str(queued.id))]
        assert all(e.at == 1e9 for e in audit)
        steps = await store.trace_events(queued.trace or f"Q{queued.id}", 50)
        assert [(e.kind, e.queue_id) for e in steps][-3:] == [
            ("retry", queued.id), ("bounce", queued.id), ("delete", queued.id)]
    finally:
        await store.close()


def test_queue_actions_are_shared_and_audited(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path / "data"))
