"""Keeping the ACME certificate fresh while `serve` runs (and once, for `mailhouse cert renew`).

At start and every `check_interval` the task looks at the served certificate's expiry; within
`renew_before_days` (or with no ACME certificate yet) it issues a new one in a worker thread
(acme_client.py), installs it and calls `on_installed` (App.reload_tls: every process hands the
new pair to new handshakes, open sessions keep theirs). A failure leaves the old pair in place,
logs a warning at every check until it works, and retries with backoff between
RETRY_MIN and the check interval. `state` is what the doctor, `cert status` and the admin show.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar, cast

from mailhouse.config import Config
from mailhouse.service.acme_challenges import ChallengeBoard
from mailhouse.service.acme_client import AcmeError, AcmeSettings, issue
from mailhouse.service.acme_files import (
    RenewalState,
    current_pair,
    load_state,
    not_after,
    save_state,
)

log = logging.getLogger("mailhouse.acme")

T = TypeVar("T")
RETRY_MIN: Final = 60.0  # seconds before the first retry after a failure; doubles each time
SECONDS_PER_DAY: Final = 86_400.0


class RenewalService:
    def __init__(self, settings: AcmeSettings, renew_before_days: int,
                 check_interval: float, board: ChallengeBoard | None = None,
                 on_installed: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.renew_before = renew_before_days * SECONDS_PER_DAY
        self.check_interval = check_interval
        self.board = board or ChallengeBoard()
        self.on_installed = on_installed
        self._clock = clock
        previous = load_state(settings.data_dir)
        self.state = RenewalState(failures=previous.failures) if previous else RenewalState()
        self.state = dataclasses.replace(self.state, not_after=self._expiry())
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def _expiry(self) -> float | None:
        pair = current_pair(self.settings.data_dir)
        expiry = not_after(pair[0]) if pair else None
        return expiry.timestamp() if expiry else None

    def due(self) -> bool:
        """No ACME certificate yet, or one expiring within the window."""
        expiry = self._expiry()
        return expiry is None or expiry - self._clock() <= self.renew_before

    async def check(self, *, force: bool = False) -> bool:
        """One look: renew when due (or forced). True when a new pair was installed."""
        if not force and not self.due():
            self._record(dataclasses.replace(
                    self.state, next_check=self._clock() + self.check_interval))
            return False
        started = self._clock()
        try:
            await _in_daemon_thread(issue, self.settings, self.board)
        except AcmeError as exc:
            failures = self.state.failures + 1
            delay = min(self.check_interval, RETRY_MIN * 2 ** min(failures - 1, 20))
            self._record(dataclasses.replace(
                self.state, last_attempt=started, last_error=str(exc), failures=failures,
                next_check=self._clock() + delay))
            log.warning("event=acme.renewal_failed names=%s error=%r failures=%d retry_in=%.0f "
                        "(the current certificate stays: %s)", ",".join(self.settings.names),
                        str(exc), failures, delay, _expiry_text(self.state.not_after))
            return False
        self._record(dataclasses.replace(
            self.state, last_attempt=started, last_success=self._clock(), last_error=None,
            failures=0, next_check=self._clock() + self.check_interval))
        if self.on_installed is not None:
            self.on_installed()
        return True

    def _record(self, state: RenewalState) -> None:
        self.state = dataclasses.replace(state, not_after=self._expiry())
        try:
            save_state(self.settings.data_dir, self.state)
        except OSError as exc:
            log.warning("event=acme.state_not_saved error=%s", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="acme-renewal")

    def wake(self) -> None:
        """Check now (SIGHUP, an admin's request) rather than at the next scheduled time."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not end renewal for good
                log.exception("event=acme.check_crashed")
                self._record(dataclasses.replace(
                    self.state, next_check=self._clock() + self.check_interval))
            wait = max(1.0, (self.state.next_check or 0) - self._clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def stop(self) -> None:
        """Ends the loop; an issuance in its thread finishes on its own (bounded by the
        library's timeouts) and its result is installed for the next start."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


async def _in_daemon_thread(fn: Callable[[AcmeSettings, ChallengeBoard], T],
                            settings: AcmeSettings, board: ChallengeBoard) -> T:
    """`fn` in its own daemon thread rather than the loop's default executor: asyncio.run
    waits for that executor at exit, and an order still polling the CA (up to the order
    deadline plus network timeouts) would hold up a shutdown. Killed mid-way, an issuance
    leaves at most an unlinked pair directory; `current` only ever moves in one rename."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def work() -> None:
        try:
            result = fn(settings, board)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="acme-issue", daemon=True).start()
    return await future


def _expiry_text(epoch: float | None) -> str:
    if epoch is None:
        return "no ACME certificate yet, the self-signed one is served"
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return f"it expires {when:%Y-%m-%d %H:%M} UTC"


def from_config(config: Config, board: ChallengeBoard | None = None,
                on_installed: Callable[[], None] | None = None) -> RenewalService:
    """The service for `[acme]` of `config`."""
    acme = config.acme
    settings = AcmeSettings(directory=acme.directory, names=acme.all_names(config.hostname),
                            challenges=acme.challenges, data_dir=config.data_dir,
                            contact=acme.contact, ca_bundle=acme.ca_bundle)
    return RenewalService(settings, acme.renew_before_days, acme.check_interval, board,
                          on_installed)
