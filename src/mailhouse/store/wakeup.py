"""Wake-ups across processes: "mailbox M of account A changed, up to MODSEQ m" (issue 8).

Deliveries commit in the main process, POP3 and IMAP sessions live in worker processes, bounces
are written by the queue process, and the CLI imports mail. A session that waits (IMAP IDLE,
RFC 2177; a selected mailbox between commands, RFC 9051 §7) must learn of a change within a
second without polling the database. The change itself is read from the store ("what changed
since MODSEQ m", an index range): a wake-up is only a hint that it is worth reading. So a lost
wake-up costs latency, never correctness, and the mechanism can be lossy under overload.

The interface (`Wakeups`) is what a PostgreSQL store will implement with LISTEN/NOTIFY (one
channel, the same payload). The embedded implementation (`SocketWakeups`) gives each process one
Unix datagram socket in `data_dir/run/wakeup/`; `publish` sends one datagram to every socket there
(the directory is re-listed only when its mtime changes), so no broker process is needed and a
CLI process can publish too. A socket whose process died refuses the datagram (ECONNREFUSED) and
is unlinked. A subscriber whose buffer is full drops the datagram (EAGAIN): it has unread
wake-ups pending anyway, which make it re-read the change feed.

Datagram payload: three unsigned 64-bit integers (account id, mailbox id, MODSEQ), big-endian.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("mailhouse.store.wakeup")

_PAYLOAD = struct.Struct(">QQQ")
WAKEUP_DIR = Path("run") / "wakeup"  # under data_dir
SOCKET_SUFFIX = ".sock"
RECEIVE_BATCH = 256  # datagrams read per readiness callback before yielding to the loop
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, with its NUL


@dataclass(frozen=True, slots=True)
class Change:
    account_id: int
    mailbox_id: int
    modseq: int


class Watch:
    """One subscriber (a session): the mailboxes of its account that changed since it last
    looked, coalesced (the highest MODSEQ per mailbox)."""

    def __init__(self, account_id: int, on_close: Callable[[Watch], None],
                 drain: Callable[[], None] | None = None) -> None:
        self.account_id = account_id
        self._pending: dict[int, int] = {}
        self._event = asyncio.Event()
        self._on_close = on_close
        self._drain = drain

    def _add(self, change: Change) -> None:
        if change.modseq > self._pending.get(change.mailbox_id, -1):
            self._pending[change.mailbox_id] = change.modseq
        self._event.set()

    def take(self) -> dict[int, int]:
        """Changed mailbox ids with their highest MODSEQ seen, and forget them."""
        pending, self._pending = self._pending, {}
        self._event.clear()
        return pending

    def poll(self) -> dict[int, int]:
        """`take()` after reading every wake-up already sent to this process, so a change
        committed before a client's next command (an SMTP 250, another session's OK) is seen
        by that command even if the event loop has not read the datagram yet."""
        if self._drain is not None:
            self._drain()
        return self.take()

    async def wait(self, timeout: float | None = None) -> dict[int, int]:
        """Wait until something changed (or `timeout` seconds); then `take()`."""
        if not self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        return self.take()

    def close(self) -> None:
        self._on_close(self)


class Wakeups(Protocol):
    """Publish after commit; watch per account. Implementations: LocalWakeups (one process),
    SocketWakeups (processes sharing one data directory), later LISTEN/NOTIFY."""

    async def start(self) -> None: ...

    def publish(self, account_id: int, mailbox_id: int, modseq: int) -> None:
        """Tell every process (this one included) that the mailbox changed. Call it after the
        change is committed; never blocks, never raises."""

    def watch(self, account_id: int) -> Watch: ...

    async def close(self) -> None: ...


class _Fanout:
    """The in-process half: watches by account."""

    def __init__(self) -> None:
        self._watches: dict[int, set[Watch]] = {}

    def watch(self, account_id: int) -> Watch:
        watch = Watch(account_id, self._forget, self.drain)
        self._watches.setdefault(account_id, set()).add(watch)
        return watch

    def _forget(self, watch: Watch) -> None:
        watches = self._watches.get(watch.account_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.account_id]

    def drain(self) -> None:
        """Read what other processes sent and not read yet (in-process: nothing to read)."""

    def dispatch(self, change: Change) -> None:
        for watch in self._watches.get(change.account_id, ()):
            watch._add(change)


class LocalWakeups(_Fanout):
    """One process only (the memory store, tests)."""

    async def start(self) -> None:
        pass

    def publish(self, account_id: int, mailbox_id: int, modseq: int) -> None:
        self.dispatch(Change(account_id, mailbox_id, modseq))

    async def close(self) -> None:
        pass


class SocketWakeups(_Fanout):
    """Processes on one data directory, one datagram socket each (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self._data_dir = Path(data_dir)
        self._dir = self._data_dir / WAKEUP_DIR
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._peers: list[str] = []
        self._peers_mtime: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dir_fd: int | None = None

    def _address(self, name: str) -> str:
        """A socket address for `name` in the directory: its path, or, when that is longer
        than sun_path allows (deep data directories), the same file through
        /proc/self/fd/<directory fd>, which Linux resolves on bind and sendto."""
        path = str(self._dir / name)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
        if self._dir_fd is None:
            self._dir_fd = os.open(self._dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    async def start(self) -> None:
        # Private whatever the umask: each level made 0700 (mkdir's parents= ignores mode), and
        # the socket, which bind() creates by the umask, narrowed to 0600 at once.
        self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for level in (*reversed(WAKEUP_DIR.parents[:-1]), WAKEUP_DIR):
            (self._data_dir / level).mkdir(exist_ok=True, mode=0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        path = self._dir / f"{os.getpid()}-{secrets.token_hex(4)}{SOCKET_SUFFIX}"
        address = self._address(path.name)
        try:
            sock.bind(address)
            os.chmod(address, 0o600)
        except OSError:
            sock.close()
            raise
        self._sock, self._path = sock, path
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def drain(self) -> None:
        if self._sock is not None:
            self._readable()

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(RECEIVE_BATCH):
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("event=wakeup.receive_failed error=%s", exc)
                return
            if len(data) == _PAYLOAD.size:
                self.dispatch(Change(*_PAYLOAD.unpack(data)))

    def _targets(self) -> list[str]:
        try:
            mtime = os.stat(self._dir).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._peers_mtime:
            own = self._path.name if self._path is not None else None
            with os.scandir(self._dir) as entries:
                self._peers = [entry.name for entry in entries
                               if entry.name.endswith(SOCKET_SUFFIX) and entry.name != own]
            self._peers_mtime = mtime
        return self._peers

    def publish(self, account_id: int, mailbox_id: int, modseq: int) -> None:
        change = Change(account_id, mailbox_id, modseq)
        self.dispatch(change)
        payload = _PAYLOAD.pack(account_id, mailbox_id, modseq)
        sender = self._sock
        temporary = sender is None  # a process that never started (the CLI): send and close
        if sender is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
        try:
            for peer in list(self._targets()):
                try:
                    sender.sendto(payload, self._address(peer))
                except (BlockingIOError, InterruptedError):
                    pass  # its buffer is full: it has wake-ups to read already
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        self._forget_peer(peer)  # its process is gone
                    else:
                        log.warning("event=wakeup.send_failed error=%s", exc)
        finally:
            if temporary:
                sender.close()

    def _forget_peer(self, peer: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._dir / peer)
        with contextlib.suppress(ValueError):
            self._peers.remove(peer)

    async def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
