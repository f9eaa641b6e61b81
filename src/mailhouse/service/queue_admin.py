"""Steering the outbound queue: the one place the CLI, the admin API and the web admin go
through, so a retry or a delete is the same act (and audited the same way) from every face.

Only the store is edited: a running server's queue worker looks at the store at least once a
second, so a flush or a retry is acted on within a second, and a message deleted while its
delivery is in flight is simply not recorded (the worker's late update is a no-op). `delete`
sends no bounce, as Postfix's `postsuper -d`.

`bounce` gives up on a message's PENDING recipients. It only asks (`Store.queue_bounce`): the
queue worker, at its next round (within a second when the server or `[queue] process` runs,
else when it next starts), records them FAILED with 5.0.0 and sends the sender one DSN (none for
a null sender, RFC 5321 §6.1), as for any permanent failure. So the DSN is built where the
queue's other DSNs are, whichever process edits the store, and a delivery in flight in that
worker finishes and is recorded first (docs/decisions.md).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from mailhouse.service.trace import record_queue_action
from mailhouse.store.base import QueuedMessage, Store


class NoSuchMessage(LookupError):
    """The queue id names nothing: delivered, bounced or deleted meanwhile, or never was."""

    def __init__(self, queue_id: int) -> None:
        super().__init__(f"no queued message {queue_id} (delivered, bounced or deleted?)")
        self.queue_id = queue_id


class QueueAdmin:
    """`actor` is who is recorded in the audit log (`cli:root`, `operator:alice`)."""

    def __init__(self, store: Store, *, actor: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._actor = actor
        self._clock = clock

    async def list(self) -> list[QueuedMessage]:
        return await self._store.queue_list()

    async def get(self, queue_id: int) -> QueuedMessage:
        message = await self._store.queue_get(queue_id)
        if message is None:
            raise NoSuchMessage(queue_id)
        return message

    async def content(self, queue_id: int) -> AsyncIterator[bytes]:
        """The message as queued; NoSuchMessage also when its content went meanwhile."""
        message = await self.get(queue_id)
        try:
            async for chunk in self._store.read_blob(message.blob_id):
                yield chunk
        except KeyError:
            raise NoSuchMessage(queue_id) from None

    async def flush(self) -> int:
        """Every deferred recipient due now; how many."""
        count = await self._store.queue_retry(None, self._clock())
        await self._store.audit(self._actor, "queue.flush", f"{count} recipients", self._clock())
        return count

    async def retry(self, queue_id: int) -> int:
        """One message's deferred recipients due now; how many. Also a step of its trace."""
        message = await self.get(queue_id)
        count = await self._store.queue_retry(queue_id, self._clock())
        await self._store.audit(self._actor, "queue.retry", str(queue_id), self._clock())
        await record_queue_action(self._store, message, "retry", self._actor, self._clock())
        return count

    async def bounce(self, queue_id: int) -> int:
        """Ask the queue worker to bounce the message's PENDING recipients; how many there are
        now. Also a step of its trace; the worker's own steps (bounced, dsn) follow."""
        message = await self.get(queue_id)
        count = await self._store.queue_bounce(queue_id, self._clock())
        if count == 0:
            raise NoSuchMessage(queue_id)
        await self._store.audit(self._actor, "queue.bounce", str(queue_id), self._clock())
        await record_queue_action(self._store, message, "bounce", self._actor, self._clock())
        return count

    async def delete(self, queue_id: int) -> None:
        message = await self.get(queue_id)
        if not await self._store.queue_delete(queue_id):
            raise NoSuchMessage(queue_id)
        await self._store.audit(self._actor, "queue.delete", str(queue_id), self._clock())
        await record_queue_action(self._store, message, "delete", self._actor, self._clock())
