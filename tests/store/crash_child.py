"""Child process for test_crash: delivers from 20 tasks, and plays queue worker from a few more,
until it is killed.

Message `n` goes to a local mailbox, to the outbound queue, or both (`route(n)`). After each
store call returns, the child writes one line to stdout with one os.write, so the line is in the
pipe before anything else happens: the parent knows exactly which writes were acknowledged when
the SIGKILL landed.
  "<n>"    deliver() of message n returned (its copies and queue entry are durable);
  "d <n>"  queue_update() marking n's recipient DELIVERED returned (n left the queue);
  "t <n>"  queue_update() deferring n's recipient returned (attempts 1, a reply, far future);
  "w <n>"  written just before a queue_update() that would finish n: if the kill lands after its
           commit but before "d <n>", n is gone from the queue without its line.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
from pathlib import Path

from mailhouse.store import open_store
from mailhouse.store.base import (
    DeliveryTarget,
    Outcome,
    QueueRequest,
    RecipientStatus,
    RecipientUpdate,
    Store,
)

TASKS = 20
WORKERS = 3
BIG_EVERY = 7  # every 7th message spills to its file while it is being written
LATER = 4_000_000_000.0  # deferred recipients wait until then
DEFER_REPLY = "451 4.7.1 try again later"


def body(number: int) -> bytes:
    rng = random.Random(number)
    size = 300_000 if number % BIG_EVERY == 0 else rng.randrange(200, 8_000)
    return b"X-Seq: %d\r\n\r\n" % number + rng.randbytes(size)


def number_of(data: bytes) -> int:
    return int(data.split(b"\r\n", 1)[0].removeprefix(b"X-Seq: "))


def route(number: int) -> tuple[bool, bool]:
    """(stored locally, queued): a third each local only, remote only, both."""
    return {0: (True, True), 1: (False, True), 2: (True, False)}[number % 3]


def recipient(number: int) -> str:
    return f"r{number}@remote.example"


async def deliver_forever(store: Store, account_id: int, numbers: itertools.count[int]) -> None:
    while True:
        number = next(numbers)
        local, queued = route(number)
        data = body(number)
        spool = store.new_spool()
        for start in range(0, len(data), 32_768):
            await spool.write(data[start : start + 32_768])
        targets = [DeliveryTarget(account_id)] if local else []
        request = QueueRequest("sender@example.org", (recipient(number),)) if queued else None
        outcomes = await store.deliver(spool, targets, queue=request)
        assert outcomes == [Outcome.DELIVERED] * len(targets)
        os.write(1, b"%d\n" % number)


async def work_forever(store: Store, taken: set[int]) -> None:
    """Even messages are delivered (they leave the queue), odd ones deferred."""
    while True:
        for message in await store.queue_due(LATER - 1, 10):
            if message.id in taken:
                continue
            taken.add(message.id)
            number = int(message.recipients[0].address[1:].partition("@")[0])
            if number % 2 == 0:
                update = RecipientUpdate(recipient(number), RecipientStatus.DELIVERED, 0, "250 ok")
                tag = b"d"
                os.write(1, b"w %d\n" % number)
            else:
                update = RecipientUpdate(
                    recipient(number), RecipientStatus.PENDING, LATER, DEFER_REPLY
                )
                tag = b"t"
            await store.queue_update(message.id, [update])
            os.write(1, b"%s %d\n" % (tag, number))
        await asyncio.sleep(0.001)


async def main(data_dir: Path, account_id: int, first: int) -> None:
    store = open_store(data_dir)
    await store.open()
    numbers = itertools.count(first)
    taken: set[int] = set()
    os.write(1, b"ready\n")
    await asyncio.gather(
        *(deliver_forever(store, account_id, numbers) for _ in range(TASKS)),
        *(work_forever(store, taken) for _ in range(WORKERS)),
    )


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
