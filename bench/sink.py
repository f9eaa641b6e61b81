"""Postfix's smtp-sink(1) as the "remote MX" of a relay benchmark, with a live message counter.

``smtp-sink -c`` prints ``sess=N quit=N mesg=N`` followed by a carriage return each time a
session ends, a QUIT is executed or a final "." is received; a reader thread keeps the latest
``mesg`` value, and the moment it first reached an armed target, so end-to-end time is known to
within a pipe write. ``-D FILE`` appends every received message to one dump file (no fsync; it
costs the sink little), read afterwards to check the delivered mail message by message
(`message_ids`). AUTH, XCLIENT and XFORWARD are not announced (``-a -C -F``); smtp-sink never
offers STARTTLS, so every client delivers to it in clear text. Loopback only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

from tests.helpers.net import smtp_greets, wait_until
from tests.helpers.tools import program

_MESG = re.compile(rb"mesg=(\d+)")
_READ_CHUNK = 65536
# Reads of the -c output per sink: EOF (close() stops smtp-sink) ends the loop long before;
# each read returns at least one ~30-byte record, so this allows hundreds of millions of them.
_MAX_READS = 100_000_000


class SinkError(RuntimeError):
    pass


def free_port_on(host: str) -> int:
    """A TCP port free on `host` (a loopback address) a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class SmtpSink:
    """One smtp-sink process on host:port, counting messages and dumping them to a file."""

    def __init__(
        self,
        base_dir: Path,
        host: str = "127.0.0.2",
        *,
        port: int | None = None,
        hostname: str = "sink.test",
        dump: bool = True,
        backlog: int = 1024,
    ) -> None:
        self.base = base_dir
        self.host = host
        self.port = port if port is not None else free_port_on(host)
        self.hostname = hostname
        self.dump_path = self.base / "dump" if dump else None
        self.backlog = backlog
        self.process: subprocess.Popen[bytes] | None = None
        self._count = 0
        self._target: int | None = None
        self._reached_at: float | None = None
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def argv(self) -> list[str]:
        argv = [program("smtp-sink"), "-c", "-a", "-C", "-F", "-h", self.hostname]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to run as root without -u
        if self.dump_path is not None:
            argv += ["-D", str(self.dump_path)]
        return [*argv, f"{self.host}:{self.port}", str(self.backlog)]

    def start(self, timeout: float = 10.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.base, nobody.pw_uid, nobody.pw_gid)
        argv = self.argv()
        with (self.base / "stderr").open("ab") as errors:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
        self._reader = threading.Thread(target=self._read_counter, name="smtp-sink-c", daemon=True)
        self._reader.start()
        process = self.process

        def exited() -> str | None:
            code = process.poll()
            return None if code is None else f"{' '.join(argv)} exited {code}: {self.stderr()}"

        try:
            ok = wait_until(
                lambda: smtp_greets(self.port, self.host), timeout, interval=0.05, abort=exited
            )
        except RuntimeError as exc:
            raise SinkError(str(exc)) from None
        if not ok:
            self.close()
            raise SinkError(f"smtp-sink not answering on {self.host}:{self.port}")

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stderr(self) -> str:
        try:
            return (self.base / "stderr").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ counting

    def _read_counter(self) -> None:
        """Follow the -c output until smtp-sink exits (EOF ends the loop; close() stops it)."""
        process = self.process
        if process is None or process.stdout is None:
            return
        fd = process.stdout.fileno()
        tail = b""
        for _ in range(_MAX_READS):
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                return
            now = time.monotonic()
            data = tail + chunk
            # Only complete records (ended by \r) count; keep the partial one for next time.
            complete, _, tail = data.rpartition(b"\r")
            matches = _MESG.findall(complete)
            if not matches:
                continue
            count = int(matches[-1])
            with self._lock:
                self._count = count
                if self._target is not None and self._reached_at is None and count >= self._target:
                    self._reached_at = now

    @property
    def count(self) -> int:
        """Messages received so far (every "." the sink answered)."""
        with self._lock:
            return self._count

    def arm(self, target: int) -> None:
        """Record the moment the counter first reaches `target` (see `reached_at`)."""
        with self._lock:
            self._target = target
            self._reached_at = self.monotonic_now() if self._count >= target else None

    @property
    def reached_at(self) -> float | None:
        """time.monotonic() when the armed target was reached, or None."""
        with self._lock:
            return self._reached_at

    @staticmethod
    def monotonic_now() -> float:
        return time.monotonic()

    def wait_for(self, target: int, timeout: float, interval: float = 0.02) -> bool:
        """Wait (bounded) until the counter reaches `target`; False on timeout or exit."""

        def died() -> str | None:
            process = self.process
            if process is not None and process.poll() is not None:
                return f"smtp-sink exited {process.returncode}: {self.stderr()}"
            return None

        try:
            return wait_until(lambda: self.count >= target, timeout, interval, abort=died)
        except RuntimeError as exc:
            raise SinkError(str(exc)) from None

    # ------------------------------------------------------------------ verification

    def message_ids(self) -> Counter[str]:
        """Message-ID header values in the dump, with how often each arrived.

        Header lines only (up to each message's blank line), a folded value included.
        """
        found: Counter[str] = Counter()
        if self.dump_path is None:
            return found
        with contextlib.suppress(FileNotFoundError), self.dump_path.open("rb") as dump:
            in_header = False
            pending = False  # "Message-ID:" with the value on the next (folded) line
            for raw in dump:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"X-Client-Addr:"):
                    in_header, pending = True, False  # smtp-sink starts every message so
                    continue
                if not in_header:
                    continue
                if not line:
                    in_header = False
                    continue
                if pending and line[:1] in (b" ", b"\t"):
                    found[line.strip().decode("ascii", "replace")] += 1
                    pending = False
                    continue
                pending = False
                if line[:11].lower() == b"message-id:":
                    value = line[11:].strip()
                    if value:
                        found[value.decode("ascii", "replace")] += 1
                    else:
                        pending = True
        return found
