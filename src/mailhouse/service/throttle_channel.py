"""The login throttle across processes: POP3 worker processes ask the main process's
`LoginThrottle` (throttle.py) for every password check, so there is one count for the server.

Each worker gets its own channel, one end of a Unix socketpair made fresh for each spawn
(ChildSupervisor's `channels`): the main process serves its end (`ThrottleServer`), the worker
talks through the other (`RemoteThrottle`, the same gate as the local throttle for LoginGuard).
When a worker dies, however it dies, the main process reads end of file and releases every slot
that worker held, so a crash never leaves a key blocked.

The protocol, both ways: frames of a 2-byte big-endian length (1..MAX_FRAME) and a body that
starts with a kind byte and an 8-byte request id chosen by the worker:
  worker -> main  `A` id, 2-byte length, ip key, user key (the rest)   acquire a slot
                  `R` id, one of `S` `F` `X` (success, failure, abandoned)  release it
  main -> worker  `Y` id (granted) or `N` id (refused)
Keys travel as computed by `ip_key`/`user_key` in the worker (UTF-8, at most MAX_KEY bytes,
with their `ip:`/`user:` prefixes). An acquire is one round trip; a release is a one-way frame,
so a login costs the worker one round trip on a local socket. Anything malformed from a worker
(unknown kind, bad length, bad UTF-8, a duplicate or unknown id) is logged and ends that
worker's channel (its slots are released; the worker then restarts, see worker_process.py),
never the main process.

A worker fails closed: while the main process does not answer (channel lost, or no reply within
the queue timeout plus REPLY_MARGIN) its logins are refused, answered like a throttle, and
logged as `event=auth.throttle_unreachable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from mailhouse.service.throttle import (
    BUSY,
    CheckResult,
    LoginThrottle,
    Ticket,
    ip_key,
    user_key,
)

log = logging.getLogger("mailhouse.auth")

MAX_FRAME = 2048  # bytes of one frame's body
MAX_KEY = 1000  # bytes of one key (an address is at most 256 octets, a little more casefolded)
REPLY_MARGIN = 5.0  # seconds beyond the queue timeout a worker waits for the main process
_LENGTH = struct.Struct("!H")
_HEAD = struct.Struct("!cQ")  # kind, request id
_KEY_LENGTH = struct.Struct("!H")
ACQUIRE, RELEASE, GRANTED, REFUSED = b"A", b"R", b"Y", b"N"
_RESULTS = {CheckResult.SUCCESS: b"S", CheckResult.FAILURE: b"F", CheckResult.ABANDONED: b"X"}
_RESULT_OF = {code: result for result, code in _RESULTS.items()}


class ChannelError(ValueError):
    """A frame that breaks the protocol."""


@dataclass(frozen=True, slots=True)
class Acquire:
    id: int
    ip_key: str
    user_key: str


@dataclass(frozen=True, slots=True)
class Release:
    id: int
    result: CheckResult


# --- frames ------------------------------------------------------------------------------------

def _frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def encode_acquire(request_id: int, ipk: str, userk: str) -> bytes:
    ip_bytes, user_bytes = _key_bytes(ipk, "ip:"), _key_bytes(userk, "user:")
    return _frame(_HEAD.pack(ACQUIRE, request_id) + _KEY_LENGTH.pack(len(ip_bytes)) + ip_bytes
                  + user_bytes)


def encode_release(request_id: int, result: CheckResult) -> bytes:
    return _frame(_HEAD.pack(RELEASE, request_id) + _RESULTS[result])


def encode_reply(request_id: int, granted: bool) -> bytes:
    return _frame(_HEAD.pack(GRANTED if granted else REFUSED, request_id))


def decode_request(body: bytes) -> Acquire | Release:
    """A worker's frame body, strictly: raises ChannelError for anything else."""
    kind, request_id = _head(body)
    rest = body[_HEAD.size:]
    if kind == RELEASE:
        if len(rest) != 1 or rest not in _RESULT_OF:
            raise ChannelError("bad release")
        return Release(request_id, _RESULT_OF[rest])
    if kind != ACQUIRE:
        raise ChannelError(f"unknown request kind {kind!r}")
    if len(rest) < _KEY_LENGTH.size:
        raise ChannelError("short acquire")
    (ip_length,) = _KEY_LENGTH.unpack_from(rest)
    ip_bytes = rest[_KEY_LENGTH.size:_KEY_LENGTH.size + ip_length]
    user_bytes = rest[_KEY_LENGTH.size + ip_length:]
    if len(ip_bytes) != ip_length:
        raise ChannelError("short acquire")
    return Acquire(request_id, _key(ip_bytes, "ip:"), _key(user_bytes, "user:"))


def decode_reply(body: bytes) -> tuple[int, bool]:
    """The main process's frame body: (request id, granted)."""
    kind, request_id = _head(body)
    if len(body) != _HEAD.size or kind not in (GRANTED, REFUSED):
        raise ChannelError("bad reply")
    return request_id, kind == GRANTED


def _head(body: bytes) -> tuple[bytes, int]:
    if len(body) < _HEAD.size:
        raise ChannelError("short frame")
    kind, request_id = _HEAD.unpack_from(body)
    return kind, request_id


def _key_bytes(key: str, prefix: str) -> bytes:
    data = key.encode("utf-8")
    if not key.startswith(prefix) or len(data) > MAX_KEY:
        raise ChannelError(f"unsendable {prefix} key")
    return data


def _key(data: bytes, prefix: str) -> str:
    if len(data) > MAX_KEY:
        raise ChannelError("key too long")
    try:
        key = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ChannelError("key is not UTF-8") from None
    if not key.startswith(prefix):
        raise ChannelError(f"key without {prefix}")
    return key


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One frame's body; None at a clean end of file. Raises ChannelError, IncompleteReadError
    (end of file inside a frame)."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    (length,) = _LENGTH.unpack(head)
    if not 0 < length <= MAX_FRAME:
        raise ChannelError(f"frame length {length}")
    return await reader.readexactly(length)


# --- the main process's side -------------------------------------------------------------------

@dataclass(eq=False)
class _Channel:
    writer: asyncio.StreamWriter
    held: dict[int, Ticket] = field(default_factory=dict)  # granted, not released
    waiting: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    closed: bool = False

    def reply(self, request_id: int, granted: bool) -> None:
        if not self.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(encode_reply(request_id, granted))


class ThrottleServer:
    """Serves the main process's LoginThrottle to worker processes, one channel each.
    `max_pending`: requests one worker may have open (waiting or granted) at once; past it an
    acquire is refused (a worker has at most one login per connection it admits)."""

    def __init__(self, throttle: LoginThrottle, *, max_pending: int) -> None:
        self.throttle = throttle
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()

    def open_channel(self) -> int:
        """A fresh channel: serve one end here and return the other's descriptor, for one
        child (the caller passes it on and closes it)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        task = asyncio.get_running_loop().create_task(self._serve(ours),
                                                      name="throttle-channel")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return theirs.detach()

    @property
    def channels(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            raise
        channel = _Channel(writer)
        reason = "eof"
        try:
            while (body := await read_frame(reader)) is not None:
                self._handle(channel, decode_request(body))
        except (ChannelError, asyncio.IncompleteReadError) as exc:
            reason = "protocol"
            log.error("event=auth.channel_error reason=%s", _reason(exc))
        except OSError as exc:
            reason = "error"
            log.warning("event=auth.channel_error reason=%s", _reason(exc))
        except Exception:
            reason = "bug"
            log.exception("event=auth.channel_error reason=bug")
        finally:
            released = self._drop(channel)
            log.info("event=auth.channel_closed reason=%s released=%d", reason, released)
            writer.close()

    def _handle(self, channel: _Channel, request: Acquire | Release) -> None:
        if isinstance(request, Release):
            ticket = channel.held.pop(request.id, None)
            if ticket is None:
                raise ChannelError("release of an unknown id")
            self.throttle.release(ticket, request.result)
            return
        request_id = request.id
        if request_id in channel.held or request_id in channel.waiting:
            raise ChannelError("duplicate id")
        if len(channel.held) + len(channel.waiting) >= self.max_pending:
            log.warning("event=auth.channel_full pending=%d", self.max_pending)
            channel.reply(request_id, False)
            return
        got = self.throttle.try_acquire_keys(request.ip_key, request.user_key)
        if got is BUSY:
            task = asyncio.get_running_loop().create_task(self._wait(channel, request))
            channel.waiting[request_id] = task
            return
        if got is not None:
            channel.held[request_id] = got
        channel.reply(request_id, got is not None)

    async def _wait(self, channel: _Channel, request: Acquire) -> None:
        try:
            ticket = await self.throttle.acquire_keys(request.ip_key, request.user_key)
        finally:
            channel.waiting.pop(request.id, None)
        if channel.closed:
            if ticket is not None:
                self.throttle.release(ticket, CheckResult.ABANDONED)
            return
        if ticket is not None:
            channel.held[request.id] = ticket
        channel.reply(request.id, ticket is not None)

    def _drop(self, channel: _Channel) -> int:
        """The worker is gone (or broke the protocol): release everything it held."""
        channel.closed = True
        for task in list(channel.waiting.values()):
            task.cancel()  # acquire_keys gives back a slot granted meanwhile
        channel.waiting.clear()
        held = list(channel.held.values())
        channel.held.clear()
        for ticket in held:
            self.throttle.release(ticket, CheckResult.ABANDONED)
        return len(held)


def _reason(exc: BaseException) -> str:
    return type(exc).__name__ + (f":{exc}" if isinstance(exc, ChannelError) else "")


# --- the worker's side -------------------------------------------------------------------------

class RemoteThrottle:
    """The main process's LoginThrottle, seen from a worker through its channel (ThrottleGate).
    `timeout`: the longest wait for an answer (the queue timeout plus REPLY_MARGIN); `on_lost`:
    called once when the channel breaks."""

    def __init__(self, sock: socket.socket, *, timeout: float,
                 on_lost: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._timeout = timeout
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[bool]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.lost = False

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read(reader), name="throttle-client")

    async def close(self) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self._writer.close()

    async def acquire(self, ip: str, username: str) -> Ticket | None:
        ipk, userk = ip_key(ip), user_key(username)
        if self.lost or self._writer is None:
            log.warning("event=auth.throttle_unreachable reason=channel_lost")
            return None
        request_id = next(self._ids)
        try:
            frame = encode_acquire(request_id, ipk, userk)
        except ChannelError as exc:
            log.warning("event=auth.throttle_refused reason=%s", _reason(exc))
            return None
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(frame)
            async with asyncio.timeout(self._timeout):
                granted = await future
        except TimeoutError:
            # A grant arriving later finds no request and is released by the reader.
            log.warning("event=auth.throttle_unreachable reason=timeout")
            return None
        except BaseException:
            if future.done() and not future.cancelled() and future.result():
                self._send(encode_release(request_id, CheckResult.ABANDONED))
            raise
        finally:
            self._pending.pop(request_id, None)
        if not granted:
            if self.lost:
                log.warning("event=auth.throttle_unreachable reason=channel_lost")
            return None
        return Ticket(ipk, userk, (), request_id)

    def release(self, ticket: Ticket, result: CheckResult) -> None:
        if not self.lost:  # else the main process released it when the channel broke
            self._send(encode_release(ticket.id, result))

    def _send(self, frame: bytes) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(frame)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "eof"
        try:
            while (body := await read_frame(reader)) is not None:
                request_id, granted = decode_reply(body)
                future = self._pending.get(request_id)
                if future is not None and not future.done():
                    future.set_result(granted)
                elif granted:  # its login gave up waiting: give the slot back
                    self._send(encode_release(request_id, CheckResult.ABANDONED))
        except (ChannelError, asyncio.IncompleteReadError, OSError) as exc:
            reason = _reason(exc)
        self._lose(reason)

    def _lose(self, reason: str) -> None:
        self.lost = True
        log.error("event=auth.throttle_unreachable reason=%s pending=%d", reason,
                  len(self._pending))
        for future in self._pending.values():
            if not future.done():
                future.set_result(False)
        if self._on_lost is not None:
            self._on_lost()
