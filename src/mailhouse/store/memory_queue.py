"""The outbound queue of the memory store (memory.py), apart so neither file outgrows reading.

A mixin: MemoryStore owns the state and supplies `_check_open` and `_release` (a queued message
holds one reference on its blob, as in the embedded store).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mailhouse.store.base import (
    QueuedMessage,
    QueueRecipient,
    QueueStats,
    RecipientStatus,
    RecipientUpdate,
)
from mailhouse.store.queue_rules import checked_updates, clean_reply


class MemoryQueue:
    _queue: dict[int, QueuedMessage]  # by id, ascending (insertion order)

    def _check_open(self) -> None:
        raise NotImplementedError

    def _release(self, blob_id: str) -> None:
        raise NotImplementedError

    async def queue_due(self, now: float, limit: int) -> list[QueuedMessage]:
        self._check_open()
        due: list[tuple[float, int]] = []
        for message in self._queue.values():
            times = [
                r.next_attempt
                for r in message.recipients
                if r.status is RecipientStatus.PENDING and r.next_attempt <= now
            ]
            if times:
                due.append((min(times), message.id))
        due.sort()
        return [self._queue[queue_id] for _, queue_id in due[: max(limit, 0)]]

    async def queue_claim(self, now: float, limit: int, lease: float) -> list[QueuedMessage]:
        # queue_due never suspends: the read and the claim are one step of the event loop.
        claimed = await self.queue_due(now, limit)
        until = now + lease
        for message in claimed:
            self._queue[message.id] = replace(message, recipients=tuple(
                replace(r, next_attempt=until)
                if r.status is RecipientStatus.PENDING and r.next_attempt <= now
                else r
                for r in message.recipients
            ))
        return claimed

    async def queue_release(self, message_id: int, addresses: Sequence[str], at: float) -> None:
        self._check_open()
        message = self._queue.get(message_id)
        if message is None:
            return
        wanted = set(addresses)
        self._queue[message_id] = replace(message, recipients=tuple(
            replace(r, next_attempt=min(r.next_attempt, at))
            if r.status is RecipientStatus.PENDING and r.address in wanted
            else r
            for r in message.recipients
        ))

    async def queue_stats(self) -> QueueStats:
        self._check_open()
        waiting = [(m.created, sum(r.status is RecipientStatus.PENDING for r in m.recipients))
                   for m in self._queue.values()]
        waiting = [(created, count) for created, count in waiting if count]
        return QueueStats(len(waiting), sum(count for _, count in waiting),
                          min((created for created, _ in waiting), default=None))

    async def queue_next_attempt(self) -> float | None:
        self._check_open()
        times = [
            r.next_attempt
            for m in self._queue.values()
            for r in m.recipients
            if r.status is RecipientStatus.PENDING
        ]
        return min(times, default=None)

    async def queue_get(self, message_id: int) -> QueuedMessage | None:
        self._check_open()
        return self._queue.get(message_id)

    async def queue_list(self) -> list[QueuedMessage]:
        self._check_open()
        return list(self._queue.values())

    async def queue_update(
        self,
        message_id: int,
        updates: Sequence[RecipientUpdate],
        *,
        delay_warned: bool | None = None,
    ) -> None:
        self._check_open()
        updates = checked_updates(updates)
        message = self._queue.get(message_id)
        if message is None:
            return
        recipients = list(message.recipients)
        for update in updates:
            for i, r in enumerate(recipients):
                if r.address != update.address or r.status is not RecipientStatus.PENDING:
                    continue
                next_attempt = (
                    update.next_attempt
                    if update.status is RecipientStatus.PENDING
                    else r.next_attempt
                )
                recipients[i] = QueueRecipient(
                    r.address,
                    update.status,
                    r.attempts + 1,
                    next_attempt,
                    clean_reply(update.reply),
                )
        message = replace(
            message,
            recipients=tuple(recipients),
            delay_warned=message.delay_warned if delay_warned is None else delay_warned,
        )
        self._queue[message_id] = message
        if all(r.status is not RecipientStatus.PENDING for r in recipients):
            self._dequeue(message_id)

    async def queue_retry(self, message_id: int | None, now: float) -> int:
        self._check_open()
        ids = list(self._queue) if message_id is None else [message_id]
        count = 0
        for queue_id in ids:
            message = self._queue.get(queue_id)
            if message is None:
                continue
            recipients = []
            for r in message.recipients:
                if r.status is RecipientStatus.PENDING:
                    r = replace(r, next_attempt=min(r.next_attempt, now))
                    count += 1
                recipients.append(r)
            self._queue[queue_id] = replace(message, recipients=tuple(recipients))
        return count

    async def queue_bounce(self, message_id: int, now: float) -> int:
        self._check_open()
        message = self._queue.get(message_id)
        if message is None:
            return 0
        self._queue[message_id] = replace(message, bounce_requested=True)
        return await self.queue_retry(message_id, now)

    async def queue_delete(self, message_id: int) -> bool:
        self._check_open()
        return self._dequeue(message_id)

    def _dequeue(self, message_id: int) -> bool:
        message = self._queue.pop(message_id, None)
        if message is None:
            return False
        self._release(message.blob_id)
        return True
