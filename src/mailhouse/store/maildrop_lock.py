"""The POP3 maildrop lock (Store.lock_maildrop) of the embedded stores.

Two levels, so that every session holding a maildrop is alone with it (RFC 1939 §8):

- **In this store instance**: a dict of the account ids held, checked and filled before any
  await, so two logins of one process cannot both pass while the file is being locked. The
  memory store has only this level.
- **Across processes** (the SQLite store): `flock(LOCK_EX | LOCK_NB)` on
  `data_dir/locks/pop3/<account id>`, held for the session. The kernel drops it when the
  holder dies, however it dies, and flock locks belong to the open file description, so two
  store instances of one process exclude each other as two processes do. The name is the
  account id, never anything a client sent. The directories are created 0700 on first use and
  every component below data_dir is opened without following links (O_NOFOLLOW, relative to
  the parent's descriptor): a link planted in data_dir makes the login fail, it never makes
  the server create or lock a file elsewhere (tests/test_privileges.py). Opening, maybe
  creating, files blocks: it runs in a thread pool, never on the event loop.

A login cancelled while the thread takes the flock must not keep it: the descriptor the thread
still returns is closed as soon as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import Final

from mailhouse.errors import MailError
from mailhouse.store.failures import storage_error

LOCK_DIRS: Final = ("locks", "pop3")  # below data_dir
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


class HeldMaildrop:
    """One session's hold on a maildrop (base.MaildropLock): the reservation in its store
    instance and, for a file lock, the open descriptor (closing it drops the flock)."""

    __slots__ = ("_account_id", "_fd", "_owner")

    def __init__(self, owner: MaildropLocks, account_id: int) -> None:
        self._owner: MaildropLocks | None = owner
        self._account_id = account_id
        self._fd: int | None = None

    def release(self) -> None:
        """Idempotent, never raises, never awaits: safe on every path, cancellation included."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.forget(self._account_id, self)
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def attach(self, fd: int) -> bool:
        """Keep `fd`; False (and it is closed) when the hold was released meanwhile."""
        if self._owner is None:
            os.close(fd)
            return False
        self._fd = fd
        return True


class MaildropLocks:
    """The maildrop locks of one store instance. `data_dir` None: in this instance only (the
    memory store, which no other process can open)."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._data_dir = data_dir
        self._held: dict[int, HeldMaildrop] = {}

    async def lock(self, account_id: int, executor: Executor | None = None) -> HeldMaildrop | None:
        """Take `account_id`'s lock without waiting: the hold, or None when another session
        (of this instance or, with a data_dir, of any process) has it. The file is locked in
        `executor`. Raises MailError when the lock file cannot be opened (a planted link, no
        space, permissions): nothing is held then."""
        account_id = int(account_id)
        if account_id in self._held:
            return None
        hold = HeldMaildrop(self, account_id)
        self._held[account_id] = hold  # before any await: two logins cannot both pass
        if self._data_dir is None:
            return hold
        try:
            fd = await _off_loop(executor, partial(lock_file, self._data_dir, account_id))
        except OSError as exc:
            hold.release()
            raise storage_error(exc) from exc
        except BaseException:  # cancelled: the late descriptor is closed by _off_loop
            hold.release()
            raise
        if fd is None:  # another process holds it
            hold.release()
            return None
        if not hold.attach(fd):  # the store closed meanwhile
            raise MailError()
        return hold

    def forget(self, account_id: int, hold: HeldMaildrop) -> None:
        if self._held.get(account_id) is hold:
            del self._held[account_id]

    def release_all(self) -> None:
        """Drop every hold (the store closes: a closed store holds no lock)."""
        for hold in list(self._held.values()):
            hold.release()


async def _off_loop(executor: Executor | None, take: partial[int | None]) -> int | None:
    future = asyncio.get_running_loop().run_in_executor(executor, take)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_late_descriptor)
        raise


def _close_late_descriptor(future: asyncio.Future[int | None]) -> None:
    if not future.cancelled() and future.exception() is None:
        fd = future.result()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def lock_file(data_dir: Path, account_id: int) -> int | None:
    """flock `data_dir/locks/pop3/<account_id>` exclusively, without waiting: the descriptor
    that holds it, or None when another open file description does. Creates what is missing;
    raises OSError when a component below data_dir is a link or cannot be made."""
    directory = _lock_directory(data_dir)
    try:
        fd = os.open(str(int(account_id)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE, dir_fd=directory)
    finally:
        os.close(directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_directory(data_dir: Path) -> int:
    """data_dir/locks/pop3 opened, each level made 0700 if missing and entered without
    following a link (ELOOP or ENOTDIR for a planted one)."""
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for name in LOCK_DIRS:
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd
