"""The outbound queue's scheduler, in the manner of Postfix's qmgr: one task that sleeps until
the store says something is due, then hands each due message's recipients, grouped by
destination domain, to the `RemoteDelivery` under a global and a per-domain concurrency limit.
Not a polling loop per message: thousands of deferred messages cost nothing until they are due.

One attempt round for one message:
  0. an operator asked to bounce it (`mailhouse queue bounce`, `Store.queue_bounce`)? every
     PENDING recipient fails with 5.0.0 and the sender gets the DSN as in step 4, no attempt;
  1. expired (queued for `max_lifetime`)? every PENDING recipient fails with 4.4.7, no attempt;
  2. else its due PENDING recipients, grouped by domain, go to `RemoteDelivery.deliver`, one
     call per domain, all domains at once (each waits for its domain slot, then a global one);
  3. as each domain finishes, DELIVERED and TEMPORARY outcomes are recorded at once
     (TEMPORARY: PENDING again at schedule.next_attempt); PERMANENT ones wait for step 4;
  4. the round's permanent failures get ONE DSN, then are recorded FAILED. The DSN goes first:
     a crash between the two sends it twice rather than never (duplicates over loss, qmail's
     rule, security.md §1), and the DSN builder can still read the message's blob. If the DSN
     cannot be sent the recipients stay PENDING and the next round tries again;
  5. a "delayed" DSN once the message has waited `delay_warning`, if recipients are still
     pending.
Never a DSN for a message whose sender is <> (RFC 5321 §4.5.5, security.md checklist 36).

The claim: each look at the queue takes due messages with `Store.queue_claim`, which moves their
due recipients' next attempt `claim_lease` (default an hour) ahead in the same write
transaction. No other claimer, another queue process on this data directory or another node
sharing a store, takes them until the lease ends; the round's own updates then set the real
next attempt. A worker that dies mid-round leaves its recipients leased: they are tried again
when the lease ends, a delay (or a duplicate, if the remote had just accepted), never a loss.
The lease is longer than one host's session can last at the RFC 5321 §4.5.3.2 timeouts the
delivery uses (5 + 5 + 5 + 2 + 3 + 10 minutes); a round that outlives it (many hosts tried, a
long wait for a domain slot) may see its message claimed elsewhere too: a duplicate again.

A message is in at most one round at a time in one worker (`_active`); a new round starts only
after the previous one has ended. A message that comes back from a claim while its round runs
(`mailhouse queue flush` or `retry` ended its lease, or a recipient the round did not hold came
due) is not started again; the recipients claimed for it are released when the round ends, so
they are due at once. Across processes only the lease guards: a flush during a round lets
another process deliver the same recipient too (a duplicate, never a loss).

`stop()` lets rounds in flight finish within a grace time, then cancels them: a cancelled
delivery records nothing, and its round releases the recipients it had claimed, so they are
still PENDING and due, and the next worker (after a restart) tries them again. A duplicate is
possible if the remote had accepted the message just before the cancel; a loss is not. A round
that fails for a local reason releases its recipients `ROUND_FAILURE_HOLD` ahead.

Wake-ups: `wake()` (new mail was queued by this process), the earliest next attempt, the end
of a round when due messages were left waiting for room (`active_limit`), and at most every
`idle_wake` seconds (default 1), which is how a `mailhouse queue flush` or `retry` from another
process (it only edits the store) is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from mailhouse import metrics
from mailhouse.config import QueueConfig
from mailhouse.errors import Reply
from mailhouse.queue import schedule
from mailhouse.queue.contracts import (
    FailedRecipient,
    OutboundMessage,
    RemoteDelivery,
    RemoteResult,
)
from mailhouse.service.trace_recorder import TraceRecorder
from mailhouse.store.base import (
    Outcome,
    QueuedMessage,
    QueueRecipient,
    RecipientStatus,
    RecipientUpdate,
    Store,
)

log = logging.getLogger("mailhouse.queue")

IDLE_WAKE = 1.0  # longest sleep: edits by other processes (queue flush) are seen this fast
STOP_GRACE = 10.0  # how long stop() lets deliveries in flight finish before cancelling them
# Messages held in rounds at once (Postfix: qmgr_message_active_limit): at most this many are
# claimed per look. The concurrency limits, not this, bound the network.
ACTIVE_LIMIT = 1000
# A round that failed for a local reason (the store is unavailable) is not retried at once.
ROUND_FAILURE_HOLD = 30.0

EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired
EXPIRED_REPLY = "4.4.7 Delivery time expired"
# RFC 3463 X.0.0 "other undefined status": the only code for a reason no subject covers (an
# operator's decision); class 5 because the server gives up for good (docs/decisions.md).
BOUNCED_STATUS = "5.0.0"
BOUNCED_REPLY = "5.0.0 Delivery cancelled by the postmaster"
# What a delivery that raised (a bug, not a remote answer) is recorded as: try again later.
LOCAL_FAILURE = Reply(451, "4.3.0", "Local error in delivery, will retry")
NO_RESULT = Reply(451, "4.3.0", "No result for this recipient, will retry")


class BounceSender(Protocol):
    """Builds and sends delivery status notifications (RFC 3464); the app implements it with
    queue/dsn.py and routes the report to the original sender with the null reverse-path."""

    async def send_dsn(
        self, message: QueuedMessage, failed: Sequence[FailedRecipient], *, delayed: bool
    ) -> None:
        """Called before the failures are recorded: the message and its blob still exist.
        Raises if the DSN could not be stored (the worker then tries again later)."""
        ...


def domain_of(address: str) -> str:
    """The destination a recipient is grouped by: after the last @, lower-cased."""
    return address.rpartition("@")[2].lower()


def reply_line(reply: Reply) -> str:
    """A reply as one line for the store, `queue show` and the logs."""
    text = " ".join(reply.text.split())
    return " ".join(str(part) for part in (reply.code, reply.enhanced, text) if part)


def status_code(reply: Reply, outcome: Outcome) -> str:
    """The RFC 3464 Status: the reply's enhanced code when it agrees with the outcome's class,
    else the class's generic code (RFC 3463 §3.1)."""
    klass = "5" if outcome is Outcome.PERMANENT else "4"
    if reply.enhanced and reply.enhanced[:1] == klass:
        return reply.enhanced
    return f"{klass}.0.0"


@dataclass(frozen=True, slots=True)
class _Failure:
    recipient: QueueRecipient
    result: RemoteResult


class _Limits:
    """A global semaphore and one per destination domain, made on demand and dropped when no
    task uses them. The domain slot is taken first, so a task waiting for a busy domain holds
    no global slot that another domain could use."""

    def __init__(self, total: int, per_domain: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_domain = per_domain
        self._domains: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, domain: str) -> AsyncIterator[None]:
        semaphore, users = self._domains.get(domain, (None, 0))
        if semaphore is None:
            semaphore = asyncio.Semaphore(self._per_domain)
        self._domains[domain] = (semaphore, users + 1)
        try:
            async with semaphore, self._total:
                yield
        finally:
            semaphore, users = self._domains[domain]
            if users <= 1:
                del self._domains[domain]
            else:
                self._domains[domain] = (semaphore, users - 1)


class QueueWorker:
    def __init__(
        self,
        store: Store,
        delivery: RemoteDelivery,
        config: QueueConfig,
        bounce: BounceSender,
        *,
        clock: Callable[[], float] = time.time,
        idle_wake: float = IDLE_WAKE,
        active_limit: int = ACTIVE_LIMIT,
        trace: TraceRecorder | None = None,
    ) -> None:
        self._store = store
        self._trace = trace  # each attempt's outcome per recipient, for the message trace
        self._delivery = delivery
        self._config = config
        self._bounce = bounce
        self._clock = clock
        self._idle_wake = idle_wake
        self._active_limit = active_limit
        self._limits = _Limits(config.max_concurrency, config.destination_concurrency)
        self._lease = config.claim_lease
        self._active: dict[int, asyncio.Task[None]] = {}
        # Message id -> the recipients this worker claimed for it and has not recorded yet:
        # what its round releases when it ends.
        self._claimed: dict[int, set[str]] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # The last look at the queue left due messages behind (no room): the end of a round
        # should look again at once. Otherwise nothing is waiting for a slot, and a round's
        # end needs no new look (it would only re-read the messages still in flight).
        self._backlog = False

    @property
    def in_flight(self) -> frozenset[int]:
        """Ids of the messages in a round right now."""
        return frozenset(self._active)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the queue worker is already running")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="queue-worker")

    def wake(self) -> None:
        """New mail was queued (or something changed): look at the queue now."""
        self._wakeup.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Start nothing new, give rounds in flight `grace` seconds, then cancel them. Their
        unfinished recipients stay PENDING in the store."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rounds = list(self._active.values())
        if not rounds:
            return
        _, pending = await asyncio.wait(rounds, timeout=grace)
        for late in pending:
            late.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.info("event=queue.stop cancelled=%d", len(pending))

    # --- the scheduler loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wakeup.clear()  # before looking: a wake() from here on is not lost
            now = self._clock()
            try:
                more = await self._dispatch(now)
                wait = 0.0 if more else await self._sleep_time(now)
            except Exception:  # the store is unavailable: keep the worker alive, look later
                log.exception("event=queue.scan_failed")
                wait = self._idle_wake
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
            else:
                await asyncio.sleep(0)  # let the rounds just started run

    async def _dispatch(self, now: float) -> bool:
        """Claim due messages and start a round for each not already in one. True if the store
        may hold more due messages than were claimed."""
        room = self._active_limit - len(self._active)
        if room <= 0:
            self._backlog = True
            return False
        claimed = await self._store.queue_claim(now, room, self._lease)
        self._backlog = len(claimed) >= room
        started = 0
        for message in claimed:
            due = _due_addresses(message, now)
            if message.id in self._active:  # made due again during its round: see the module doc
                self._claimed.setdefault(message.id, set()).update(due)
                continue
            self._claimed[message.id] = set(due)
            task = asyncio.create_task(
                self._round(message, now), name=f"queue-round-{message.id}"
            )
            self._active[message.id] = task
            started += 1
        return started > 0 and self._backlog

    async def _sleep_time(self, scanned_at: float) -> float:
        next_at = await self._store.queue_next_attempt()
        if next_at is None:
            return self._idle_wake
        if next_at <= scanned_at:
            # Due at the scan but not claimed: over the active limit, and the end of a round
            # wakes us.
            return self._idle_wake
        return min(self._idle_wake, max(0.0, next_at - self._clock()))

    # --- one message ----------------------------------------------------------------------------
    async def _round(self, message: QueuedMessage, claimed_at: float) -> None:
        release_at: float | None = None
        try:
            await self._attempt(message, claimed_at)
        except Exception:
            log.exception("event=queue.round_failed id=%d", message.id)
            release_at = self._clock() + ROUND_FAILURE_HOLD
        finally:
            # Claimed but not recorded: not started (stop()), cancelled (stop() again: due at
            # once for the next worker), claimed again during the round, or a local failure.
            # A look at the queue during a release may claim more of them: hence the loop.
            released = False
            try:
                while left := self._claimed.pop(message.id, None):
                    at = self._clock() if release_at is None else release_at
                    await self._release(message.id, left, at)
                    released = True
            finally:
                self._active.pop(message.id, None)
                if self._backlog or released:
                    self._wakeup.set()

    async def _release(self, message_id: int, addresses: set[str], at: float) -> None:
        try:
            await self._store.queue_release(message_id, sorted(addresses), at)
        except Exception:  # the lease still ends: they are only due later
            log.exception("event=queue.release_failed id=%d rcpts=%d", message_id,
                          len(addresses))

    def _recorded(self, message_id: int, updates: Sequence[RecipientUpdate]) -> None:
        """These recipients' outcome is in the store: the round no longer releases them."""
        claimed = self._claimed.get(message_id)
        if claimed is not None:
            claimed.difference_update(u.address for u in updates)

    async def _attempt(self, message: QueuedMessage, claimed_at: float) -> None:
        now = self._clock()
        pending = [r for r in message.recipients if r.status is RecipientStatus.PENDING]
        if not pending:
            return
        if message.bounce_requested:
            await self._give_up(message, pending, "bounced", BOUNCED_STATUS, BOUNCED_REPLY)
            return
        if schedule.expired(message.created, now, self._config):
            await self._expire(message, pending)
            return
        by_domain: dict[str, list[QueueRecipient]] = {}
        for recipient in pending:
            if recipient.next_attempt <= claimed_at:  # the ones this worker claimed
                by_domain.setdefault(domain_of(recipient.address), []).append(recipient)
        outbound = OutboundMessage(
            queue_id=message.id,
            sender=message.sender,
            size=message.size,
            smtputf8=message.smtputf8,
            body_8bit=message.body_8bit,
            source=partial(self._store.read_blob, message.blob_id),
        )
        # A TaskGroup: if recording one domain's outcome fails, the others are cancelled too,
        # so no delivery of this message outlives its round.
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._attempt_domain(message, outbound, domain, recipients))
                for domain, recipients in by_domain.items()
            ]
        failures = [failure for task in tasks for failure in task.result()]
        if failures:
            await self._fail(
                message,
                [
                    FailedRecipient(
                        address=f.recipient.address,
                        action="failed",
                        status=status_code(f.result.reply, Outcome.PERMANENT),
                        diagnostic="smtp; " + reply_line(f.result.reply),
                        remote_mta=f.result.remote_host,
                    )
                    for f in failures
                ],
                [
                    RecipientUpdate(
                        f.recipient.address, RecipientStatus.FAILED, 0.0, reply_line(f.result.reply)
                    )
                    for f in failures
                ],
                {f.recipient.address: f.recipient.attempts + 1 for f in failures},
            )
        if not self._stopping and schedule.delay_warning_due(
                message.created, self._clock(), message.delay_warned, self._config):
            await self._warn(message.id)

    async def _attempt_domain(
        self,
        message: QueuedMessage,
        outbound: OutboundMessage,
        domain: str,
        recipients: list[QueueRecipient],
    ) -> list[_Failure]:
        addresses = [r.address for r in recipients]
        async with self._limits.slot(domain):
            if self._stopping:
                return []  # not started: the recipients stay PENDING and due
            started = self._clock()
            try:
                results = await self._delivery.deliver(domain, outbound, addresses)
            except Exception:
                log.exception("event=queue.delivery_failed id=%d domain=%s", message.id, domain)
                results = [
                    RemoteResult(a, Outcome.TEMPORARY, LOCAL_FAILURE) for a in addresses
                ]
        now = self._clock()
        matched = _match(addresses, results)
        updates: list[RecipientUpdate] = []
        failures: list[_Failure] = []
        for recipient, result in zip(recipients, matched, strict=True):
            line = reply_line(result.reply)
            if result.outcome is Outcome.DELIVERED:
                updates.append(
                    RecipientUpdate(recipient.address, RecipientStatus.DELIVERED, 0.0, line)
                )
            elif result.outcome is Outcome.TEMPORARY:
                retry_at = schedule.next_attempt(
                    recipient.attempts + 1, now, message.created, self._config, key=message.id
                )
                updates.append(
                    RecipientUpdate(recipient.address, RecipientStatus.PENDING, retry_at, line)
                )
            else:
                failures.append(_Failure(recipient, result))
        _log_attempt(message.id, domain, matched, now - started)
        if self._trace is not None:
            next_at = {u.address: u.next_attempt for u in updates}
            for result in matched:
                if result.outcome is not Outcome.PERMANENT:  # _fail records those
                    self._step(message, _STEP_NAMES[result.outcome], result.recipient,
                               reply=reply_line(result.reply), host=result.remote_host or "",
                               next_attempt=next_at.get(result.recipient, 0.0))
        if updates:
            await self._store.queue_update(message.id, updates)
            self._recorded(message.id, updates)
        return failures

    async def _expire(self, message: QueuedMessage, pending: list[QueueRecipient]) -> None:
        await self._give_up(message, pending, "expired", EXPIRED_STATUS, EXPIRED_REPLY)

    async def _give_up(self, message: QueuedMessage, pending: list[QueueRecipient], why: str,
                       status: str, reply: str) -> None:
        """Every PENDING recipient fails without an attempt (expired, or bounced by an
        operator); the DSN quotes each one's last remote reply, the reason it waited."""
        log.info("event=queue.%s id=%d rcpts=%d age=%.0f", why, message.id, len(pending),
                 self._clock() - message.created)
        await self._fail(
            message,
            [
                FailedRecipient(
                    address=r.address,
                    action="failed",
                    status=status,
                    diagnostic=None if not r.last_reply else "smtp; " + r.last_reply,
                    remote_mta=None,
                )
                for r in pending
            ],
            [
                RecipientUpdate(r.address, RecipientStatus.FAILED, 0.0, reply)
                for r in pending
            ],
            {r.address: r.attempts + 1 for r in pending},
        )

    async def _fail(
        self,
        message: QueuedMessage,
        failed: list[FailedRecipient],
        updates: list[RecipientUpdate],
        attempts: dict[str, int],
    ) -> None:
        """One DSN for the round's failures, then record them (see the module doc for why in
        this order)."""
        hosts = {f.address: f.remote_mta or "" for f in failed}
        if message.sender:
            try:
                await self._bounce.send_dsn(message, failed, delayed=False)
            except Exception:
                log.exception("event=queue.dsn_failed id=%d rcpts=%d", message.id, len(failed))
                for update in updates:
                    self._step(message, "deferred", update.address, reply=update.reply or "",
                               host=hosts.get(update.address, ""),
                               reason="the bounce could not be sent")
                # Not clamped to the expiry (an expired message would come straight back) and
                # never sooner than a failed round would be.
                now = self._clock()
                retry = [
                    RecipientUpdate(
                        u.address,
                        RecipientStatus.PENDING,
                        now + max(schedule.backoff(attempts[u.address], self._config),
                                  ROUND_FAILURE_HOLD),
                        u.reply,
                    )
                    for u in updates
                ]
                await self._store.queue_update(message.id, retry)
                self._recorded(message.id, retry)
                return
            self._step(message, "dsn", message.sender, report="failed", recipients=len(failed))
        else:
            log.info("event=queue.no_dsn id=%d rcpts=%d reason=null_sender", message.id,
                     len(failed))
        for update in updates:
            self._step(message, "bounced", update.address, reply=update.reply or "",
                       host=hosts.get(update.address, ""))
        await self._store.queue_update(message.id, updates)
        self._recorded(message.id, updates)

    async def _warn(self, message_id: int) -> None:
        """The "delayed" DSN, once, from the message's state after this round."""
        current = await self._store.queue_get(message_id)
        if current is None or current.delay_warned or not current.sender:
            return
        pending = [r for r in current.recipients if r.status is RecipientStatus.PENDING]
        if not pending:
            return
        delayed = [
            FailedRecipient(
                address=r.address,
                action="delayed",
                status=_delayed_status(r.last_reply),
                diagnostic=None if not r.last_reply else "smtp; " + r.last_reply,
                remote_mta=None,
            )
            for r in pending
        ]
        try:
            await self._bounce.send_dsn(current, delayed, delayed=True)
        except Exception:  # a warning is a courtesy: try again after the next attempt
            log.exception("event=queue.dsn_failed id=%d kind=delayed", message_id)
            return
        self._step(current, "dsn", current.sender, report="delayed",
                   recipients=len(delayed))
        await self._store.queue_update(message_id, [], delay_warned=True)

    def _step(self, message: QueuedMessage, kind: str, recipient: str, **detail: object) -> None:
        """One step of the message trace; a message queued before traces existed gets one
        named after its queue id."""
        if self._trace is not None:
            self._trace.record(kind, message.trace or f"Q{message.id}", detail,
                               sender=message.sender, recipient=recipient,
                               queue_id=message.id)


def _due_addresses(message: QueuedMessage, now: float) -> list[str]:
    """The recipients a claim at `now` took (the claim returns the state before it)."""
    return [
        r.address
        for r in message.recipients
        if r.status is RecipientStatus.PENDING and r.next_attempt <= now
    ]


def _match(addresses: Sequence[str], results: Sequence[RemoteResult]) -> list[RemoteResult]:
    """One result per address, in order; a recipient the delivery said nothing about is
    retried later rather than guessed at."""
    by_address = {r.recipient: r for r in results}
    return [
        by_address.get(a) or RemoteResult(a, Outcome.TEMPORARY, NO_RESULT) for a in addresses
    ]


def _delayed_status(last_reply: str | None) -> str:
    """4.x.y from the last reply (e.g. "451 4.7.1 greylisted"), else 4.0.0."""
    if last_reply:
        parts = last_reply.split()
        if len(parts) > 1 and parts[1][:2] == "4." and parts[1].count(".") == 2:
            return parts[1]
    return "4.0.0"


_OUTCOME_NAMES = {
    Outcome.DELIVERED: "delivered",
    Outcome.TEMPORARY: "deferred",
    Outcome.PERMANENT: "failed",
}
_STEP_NAMES = {Outcome.DELIVERED: "delivered", Outcome.TEMPORARY: "deferred"}
_SEVERITY = {Outcome.DELIVERED: 0, Outcome.TEMPORARY: 1, Outcome.PERMANENT: 2}


def _log_attempt(
    message_id: int, domain: str, results: Sequence[RemoteResult], elapsed: float
) -> None:
    """One line per attempt: the outcome (or "mixed"), and the most severe reply."""
    counted = metrics.get().deliveries
    for result in results:
        counted.labels(_OUTCOME_NAMES[result.outcome]).inc()
    metrics.get().delivery_seconds.observe(elapsed)
    outcomes = {r.outcome for r in results}
    outcome = _OUTCOME_NAMES[next(iter(outcomes))] if len(outcomes) == 1 else "mixed"
    worst = max(results, key=lambda r: _SEVERITY[r.outcome])
    log.info(
        "event=queue.attempt id=%d domain=%s rcpts=%d outcome=%s reply=%r host=%s delay=%.3f",
        message_id,
        domain,
        len(results),
        outcome,
        reply_line(worst.reply),
        (worst.remote_host or "-").replace(" ", ""),
        elapsed,
    )
