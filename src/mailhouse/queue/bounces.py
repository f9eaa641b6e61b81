"""Sending DSNs: the worker says which recipients failed; this builds the RFC 3464 report and
routes it to the original sender like any other message: into a local mailbox, or into the
queue with the null reverse-path, so a bounce can never bounce again (RFC 5321 §4.5.5).

A DSN for a local sender ignores the sender's quota: refusing it would lose the only news that
the sender's own message failed (a bounce cannot bounce), and retrying it would hold the failed
recipients in the queue. Only mail our users submitted is queued, so these are bounded by what
they send (docs/decisions.md, quota in SMTP)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from mailhouse.model import Address, AddressError
from mailhouse.pipeline.router import Route, resolve
from mailhouse.queue.contracts import FailedRecipient
from mailhouse.queue.dsn import build_dsn
from mailhouse.service.directory import DirectoryCache
from mailhouse.store.base import DeliveryTarget, Outcome, QueuedMessage, QueueRequest, Store

log = logging.getLogger("mailhouse.queue")

ORIGINAL_HEADERS_MAX = 64 * 1024  # how much of the original we read to return its headers


class StoreBounceSender:
    def __init__(self, store: Store, directory: DirectoryCache, *, hostname: str,
                 plus_separator: str, wake: Callable[[], None]) -> None:
        self._store = store
        self._directory = directory
        self._hostname = hostname
        self._plus = plus_separator
        self._wake = wake

    async def _original_head(self, blob_id: str) -> bytes:
        out = bytearray()
        async for chunk in self._store.read_blob(blob_id):
            out += chunk
            if len(out) >= ORIGINAL_HEADERS_MAX:
                break
        return bytes(out[:ORIGINAL_HEADERS_MAX])

    async def send_dsn(self, message: QueuedMessage, failed: Sequence[FailedRecipient], *,
                       delayed: bool) -> None:
        if not message.sender or not failed:
            return  # never a bounce for a bounce (RFC 3464 §2, RFC 5321 §4.5.5)
        try:
            sender = Address.parse(message.sender, utf8=True)
        except AddressError:
            log.warning("event=dsn.dropped id=%d reason=bad_sender", message.id)
            return
        report = build_dsn(reporting_mta=self._hostname, original_sender=message.sender,
                           recipients=failed, original=await self._original_head(message.blob_id),
                           arrival=message.created, now=time.time(), queue_id=message.id,
                           delayed=delayed)
        found = resolve(self._directory.current, sender, self._plus)
        spool = self._store.new_spool()
        if found.route is Route.LOCAL:
            await spool.write(b"Return-Path: <>\r\n" + report)
            outcomes = await self._store.deliver(
                spool, [DeliveryTarget(a, ignore_quota=True) for a in found.account_ids])
            if Outcome.DELIVERED not in outcomes:  # the account went away since the lookup
                log.warning("event=dsn.dropped id=%d reason=local_sender_gone", message.id)
                return
        elif found.route is Route.NOT_OURS:
            await spool.write(report)
            await self._store.deliver(spool, [], queue=QueueRequest(
                "", (message.sender,), smtputf8=not sender.is_ascii,
                trace=message.trace))  # the report's own attempts join the message's trace
            self._wake()
        else:
            await spool.abort()
            log.warning("event=dsn.dropped id=%d reason=unknown_local_sender", message.id)
            return
        log.info("event=dsn.sent id=%d to=<%s> kind=%s rcpts=%d", message.id, message.sender,
                 "delayed" if delayed else "failed", len(failed))
