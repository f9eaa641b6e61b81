"""Supervised child processes of `mailhouse serve`: the queue process (queue_process.py) and the
POP3 workers (worker_process.py) share this machinery.

A child is a fresh interpreter, `python -m <module>`, started with asyncio's subprocess support
after privileges were dropped (so it runs as the same unprivileged user). Before every spawn,
restarts included, the parent checks that it can still run the interpreter and read the
directories its modules come from; if not, the error names the path (privileges.py). Its
standard input is a pipe from the parent that carries, in order:
  1. a payload, pickled, behind a 4-byte length: the parent's already validated Config under
     "config", the parent's pid under "parent", and whatever else the child needs;
  2. optional one-byte wake-ups (`wake()`), coalesced: at most one write per loop iteration,
     none while the pipe is full;
  3. end of file when the parent is gone: the child stops.
Listening sockets are handed over with `pass_fds` (same fd numbers in the child). `channels`, when
given, makes descriptors for one spawn only (e.g. a socketpair end): passed to that child, listed
in the payload under "channels", and closed in the parent once it is spawned.
On Linux the child also asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which ends it
even while its loop is busy.

Supervision: a child that exits while the server runs is restarted after 1 s, doubling up to
60 s while it keeps dying young. On shutdown the parent sends SIGTERM, waits the grace, then
SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import pwd
import signal
import struct
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from mailhouse import metrics, recent_errors
from mailhouse.config import Config
from mailhouse.errors import ConfigError
from mailhouse.logfmt import JsonFormatter, SafeFormatter, Trusted
from mailhouse.privileges import interpreter_error, interpreter_problem

log = logging.getLogger("mailhouse.supervisor")

RESTART_MIN = 1.0  # first restart delay after the child died
RESTART_MAX = 60.0
STABLE_AFTER = 60.0  # a child that lived this long died of something new: restart quickly
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WAKE = b"\x01"
_LENGTH = struct.Struct("!I")
EXIT_CONFIG = 2


def configure_logging(level: str, role: str, fmt: str = "text") -> None:
    """Every process logs to the same stderr; `role` says which one wrote a line. `fmt`:
    "text", "json", or "auto" (text on a terminal, JSON otherwise)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    # Every value a peer chose is escaped in one place (logfmt.py: logs no peer can forge).
    handler.setFormatter(JsonFormatter(role) if fmt == "json" else SafeFormatter(
        f"%(asctime)s %(levelname)s %(name)s role={role} %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])


class ChildSupervisor:
    """Starts one child, wakes it, restarts it when it dies, stops it on shutdown.

    `name` prefixes the log events (`event=<name>.process_started` …); `label` is added to
    them (e.g. "worker=2")."""

    def __init__(self, config: Config, module: str, *, name: str, label: str = "",
                 payload: dict[str, Any] | None = None, pass_fds: Sequence[int] = (),
                 python: str = sys.executable,
                 channels: Callable[[], Sequence[int]] | None = None) -> None:
        self._config = config
        self._module = module
        self._name = name
        self._label = Trusted(f" {label}" if label else "")
        self._payload = dict(payload or {})
        self._pass_fds = tuple(pass_fds)
        self._python = python
        self._channels = channels
        self._process: asyncio.subprocess.Process | None = None
        self._wake_fd: int | None = None
        self._wake_pending = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def update_payload(self, **changes: Any) -> None:
        """What the next spawn gets (a restarted child: the renewed certificate's PEM)."""
        self._payload.update(changes)

    def send_signal(self, signum: int) -> None:
        """Pass a signal to the running child (SIGHUP: reload); nothing when none runs."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def start(self) -> None:
        """Start the first child (raises if it cannot be spawned at all), then supervise."""
        process = await self._spawn()
        self._task = asyncio.create_task(self._supervise(process),
                                         name=f"{self._name}-supervisor")

    def wake(self) -> None:
        """Tell the child something happened, once per loop iteration however often called."""
        if self._wake_pending or self._wake_fd is None:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        if self._wake_fd is None:
            return
        # BlockingIOError: the pipe is full of wake-ups the child has yet to read.
        # BrokenPipeError: the child is gone; its successor looks for itself when it starts.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._wake_fd, WAKE)

    def begin_stop(self) -> None:
        """Shutdown has begun: a child that exits from now on is not restarted."""
        self._stopping = True

    async def stop(self, timeout: float) -> None:
        """SIGTERM the child, wait up to `timeout` seconds, then SIGKILL."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("event=%s.process_killed%s pid=%d reason=grace_expired",
                            self._name, self._label, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_wake()

    async def _spawn(self) -> asyncio.subprocess.Process:
        # After the drop this process may no longer reach its own interpreter (a Python under
        # /root): say so, with the path, instead of failing inside exec.
        problem = interpreter_problem(self._python)
        if problem is not None:
            raise interpreter_error(_current_user(), problem)
        read_fd, write_fd = os.pipe()  # both close-on-exec; the read end becomes fd 0
        extra: tuple[int, ...] = ()
        try:
            extra = tuple(self._channels()) if self._channels is not None else ()
            payload = pickle.dumps({**self._payload, "config": self._config,
                                    "parent": os.getpid(), "channels": list(extra)})
            env = dict(os.environ)
            # The child runs the parent's copy of mailhouse, wherever it was imported from.
            package_root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            process = await asyncio.create_subprocess_exec(
                self._python, "-m", self._module,
                stdin=read_fd, stdout=None, stderr=None, env=env,
                pass_fds=(*self._pass_fds, *extra))
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        finally:
            for fd in extra:
                os.close(fd)
        os.close(read_fd)
        # The payload first, blocking (the child reads it at once), then wake-ups, non-blocking.
        try:
            await asyncio.to_thread(_write_all, write_fd, _LENGTH.pack(len(payload)) + payload)
        except OSError:
            os.close(write_fd)  # the child died at once; the supervisor sees it exit
        else:
            os.set_blocking(write_fd, False)
            self._close_wake()
            self._wake_fd = write_fd
        self._process = process
        log.info("event=%s.process_started%s pid=%d", self._name, self._label, process.pid)
        return process

    async def _supervise(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_MIN
        while True:
            started = loop.time()
            status = await process.wait()
            if self._stopping:
                return
            self._close_wake()
            if loop.time() - started >= STABLE_AFTER:
                delay = RESTART_MIN
            log.error("event=%s.process_exited%s pid=%d status=%s restart_in=%.0f",
                      self._name, self._label, process.pid, status, delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
                if self._stopping:
                    return
                try:
                    process = await self._spawn()
                except OSError:
                    log.exception("event=%s.process_spawn_failed%s", self._name, self._label)
                    continue
                except ConfigError as exc:
                    log.error("event=%s.process_spawn_failed%s reason=%s", self._name,
                              self._label, exc)
                    continue
                self.restarts += 1
                break

    def _close_wake(self) -> None:
        fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- the child's side -------------------------------------------------------------------------

def _read_exactly(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.read(fd, size - len(out))
        if not chunk:
            raise EOFError("the parent closed the pipe before the config arrived")
        out += chunk
    return bytes(out)


def read_payload(control: int = 0) -> dict[str, Any]:
    """The child's first act: the parent's payload from the pipe. Raises EOFError, OSError or
    pickle.UnpicklingError."""
    (length,) = _LENGTH.unpack(_read_exactly(control, _LENGTH.size))
    payload: dict[str, Any] = pickle.loads(_read_exactly(control, length))
    return payload


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies, as a crash of the whole server would (Linux). The pipe's
    end of file covers other systems and a parent that died before this call."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def refuses_root(config: Config) -> bool:
    """A child never runs as root unless `user = "root"` asked for it."""
    return os.geteuid() == 0 and bool(config.user) and config.user != "root"


def event_loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


# --- the child's side -------------------------------------------------------------------------

async def serve_until_stopped(control: int, on_wake: Callable[[], None] | None = None) -> bool:
    """Run until SIGTERM/SIGINT or the parent's end of file on the control pipe; bytes on the
    pipe call `on_wake`. Returns True when the parent is gone (orphaned: stop at once, no
    grace), False for a signal (an ordinary stop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    orphaned = False
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def readable() -> None:
        nonlocal orphaned
        try:
            data = os.read(control, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            if on_wake is not None:
                on_wake()
            return
        orphaned = True  # end of file: the main process is gone
        loop.remove_reader(control)
        stop.set()

    os.set_blocking(control, False)
    loop.add_reader(control, readable)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(control)
    return orphaned


def child_main(control: int, *, what: str, role: Callable[[dict[str, Any]], str],
               body: Callable[[Config, dict[str, Any]], Coroutine[Any, Any, None]],
               run: Callable[..., object] | None = None) -> int:
    """The entry point every supervised child shares: read the parent's payload, die with the
    parent, log under `role`, refuse to run as root, run `body` on the event loop."""
    try:
        payload = read_payload(control)
    except (EOFError, OSError, pickle.UnpicklingError) as exc:
        print(f"mailhouse {what} process: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    config: Config = payload["config"]
    die_with_parent(int(payload["parent"]))
    configure_logging(config.log.level, role(payload), config.log.format)
    metrics.attach()  # count into the parent's shared directory (metrics.py)
    recent_errors.attach()  # and keep the last errors there for the dashboard
    child_log = logging.getLogger(f"mailhouse.{what}.process")
    if refuses_root(config):
        child_log.error("event=%s.process_refused reason=running_as_root user=%s", what,
                        config.user)
        return EXIT_CONFIG
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        (run or event_loop_runner())(body(config, payload))
    child_log.info("event=%s.process_exit uptime=%.1f", what, time.monotonic() - started)
    return 0
