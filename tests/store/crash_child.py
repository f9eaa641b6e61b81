"""Child process for test_crash: delivers from 20 tasks until it is killed.

After each deliver() returns it writes the message's number to stdout with one os.write, so the
line is in the pipe before anything else happens: the parent knows exactly which deliveries were
acknowledged when the SIGKILL landed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
from pathlib import Path

from mailhouse.store import open_store
from mailhouse.store.base import DeliveryTarget, Outcome

TASKS = 20
BIG_EVERY = 7  # every 7th message spills to its file while it is being written


def body(number: int) -> bytes:
    rng = random.Random(number)
    size = 300_000 if number % BIG_EVERY == 0 else rng.randrange(200, 8_000)
    return b"X-Seq: %d\r\n\r\n" % number + rng.randbytes(size)


def number_of(data: bytes) -> int:
    return int(data.split(b"\r\n", 1)[0].removeprefix(b"X-Seq: "))


async def main(data_dir: Path, account_id: int, first: int) -> None:
    store = open_store(data_dir)
    await store.open()
    numbers = itertools.count(first)
    os.write(1, b"ready\n")

    async def deliver_forever() -> None:
        while True:
            number = next(numbers)
            data = body(number)
            spool = store.new_spool()
            for start in range(0, len(data), 32_768):
                await spool.write(data[start : start + 32_768])
            outcomes = await store.deliver(spool, [DeliveryTarget(account_id)])
            assert outcomes == [Outcome.DELIVERED]
            os.write(1, b"%d\n" % number)

    await asyncio.gather(*(deliver_forever() for _ in range(TASKS)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
