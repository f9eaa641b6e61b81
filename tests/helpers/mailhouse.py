"""A real mailhouse server as a subprocess, for end-to-end, interop tests and benchmarks.

The server is driven only through its public contract, exactly as an operator would:

- a TOML config file (hostname, data_dir, [listen] addresses, [limits]) written by this class,
  with every requested listener on a free 127.0.0.1 port;
- ``python -m mailhouse --config CFG domain add D`` / ``user add ADDR --password-stdin``;
- ``python -m mailhouse --config CFG serve`` in the foreground (own process group, stderr to
  BASE/server.log), stopped with SIGTERM or killed with SIGKILL;
- ``python -m mailhouse --config CFG export ADDR --maildir DIR`` to read back what was stored.

Typical use::

    server = MailhouseServer(tmp_path)           # smtp listener only
    server.add_domain("example.test")
    server.add_user("alice@example.test", "pw")
    server.start()                               # returns once every port accepts
    smtplib.SMTP("127.0.0.1", server.port("smtp"))...
    messages = server.export("alice@example.test")
    server.close()

Pass ``protocols=("smtp", "submission", "imap", ...)`` for more listeners and ``extra_toml`` for
more config sections. Nothing here knows the server's internals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from tests.helpers.maildir import StoredMessage, read_maildir
from tests.helpers.net import LOOPBACK, free_ports, port_accepts, wait_until

# Listener names in the [listen] table, in the config's order.
PROTOCOLS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")

DEFAULT_HOSTNAME = "mx.example.test"
DEFAULT_MAX_MESSAGE_SIZE = 52_428_800
CLI_TIMEOUT = 120.0


class MailhouseError(RuntimeError):
    """The server or its CLI failed; the message carries the command and its output."""


class MailhouseServer:
    """One mailhouse instance: config file, data directory, and (when started) a process."""

    def __init__(
        self,
        base_dir: Path,
        *,
        protocols: Iterable[str] = ("smtp",),
        hostname: str = DEFAULT_HOSTNAME,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        extra_toml: str = "",
        extra_limits: str = "",
        user: str | None = None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Prepare an instance under `base_dir` (created if missing); nothing runs yet.

        protocols: which [listen] entries get a free loopback port; the rest stay empty.
        extra_toml: appended verbatim to the config (e.g. a [tls] table).
        extra_limits: lines added to the [limits] table this class writes (TOML allows one).
        user: the top-level ``user`` key (the account a server started as root drops to).
            Default: "root" when running as root, so the server keeps running as the test
            process does (its production default, a "mailhouse" system user, needs that user
            to exist and every parent of data_dir to be searchable by it, which pytest's
            0700 tmp dirs are not); omitted otherwise.
        env: extra environment variables for every server and CLI process.
        """
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"unknown protocols {sorted(unknown)}; known: {PROTOCOLS}")
        self.base = base_dir
        self.base.mkdir(parents=True, exist_ok=True)
        self.protocols = tuple(protocols)
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.extra_toml = extra_toml
        self.extra_limits = extra_limits
        self.user = user if user is not None else ("root" if os.geteuid() == 0 else None)
        self.python = python
        self.env = {**os.environ, **(env or {})}
        self.config_path = self.base / "mailhouse.toml"
        self.data_dir = self.base / "data"
        self.log_path = self.base / "server.log"
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._exports = 0
        self._pick_ports()

    # ---------------------------------------------------------------- configuration

    def _pick_ports(self) -> None:
        self.ports = dict(zip(self.protocols, free_ports(len(self.protocols)), strict=True))
        self.write_config()

    def port(self, protocol: str = "smtp") -> int:
        """The loopback port of a listener (KeyError if it was not requested)."""
        return self.ports[protocol]

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    def config_text(self) -> str:
        lines = [
            f"hostname = {_toml_str(self.hostname)}",
            f"data_dir = {_toml_str(str(self.data_dir))}",
        ]
        if self.user is not None:
            lines.append(f"user = {_toml_str(self.user)}")
        lines += [
            "",
            "[listen]",
        ]
        for protocol in PROTOCOLS:
            addresses = [f"{LOOPBACK}:{self.ports[protocol]}"] if protocol in self.ports else []
            lines.append(f"{protocol} = [{', '.join(_toml_str(a) for a in addresses)}]")
        if "[log]" not in self.extra_toml:  # the tests read key=value lines from the log file
            lines += ["", "[log]", 'format = "text"']
        lines += ["", "[limits]", f"max_message_size = {self.max_message_size}"]
        if self.extra_limits:
            lines.append(self.extra_limits.strip())
        lines.append("")
        if self.extra_toml:
            lines += [self.extra_toml.strip(), ""]
        return "\n".join(lines)

    def write_config(self) -> None:
        self.config_path.write_text(self.config_text())

    # ---------------------------------------------------------------- CLI

    def cli(
        self,
        *args: str,
        stdin: bytes | None = None,
        check: bool = True,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``python -m mailhouse --config CFG *args``; raise MailhouseError on failure."""
        argv = [self.python, "-m", "mailhouse", "--config", str(self.config_path), *args]
        result = subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise MailhouseError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout.decode(errors='replace')}\n"
                f"stderr: {result.stderr.decode(errors='replace')}"
            )
        return result

    def add_domain(self, domain: str) -> None:
        self.cli("domain", "add", domain)

    def add_user(self, address: str, password: str = "correct horse battery") -> None:
        self.cli("user", "add", address, "--password-stdin", stdin=password.encode() + b"\n")

    def export(self, address: str, dest: Path | None = None) -> list[StoredMessage]:
        """Export `address`'s mail as a Maildir and return the messages in new/ and cur/."""
        if dest is None:
            self._exports += 1
            local = address.partition("@")[0].encode("ascii", "backslashreplace").decode()
            dest = self.base / "exports" / f"{self._exports:03d}-{local}"
            dest.parent.mkdir(parents=True, exist_ok=True)
        self.cli("export", address, "--maildir", str(dest))
        return read_maildir(dest)

    # ---------------------------------------------------------------- process

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start ``serve`` and return once every listener accepts TCP connections.

        If the server exits during start-up because a port was taken in the meantime (the
        free-port race), new ports are picked and it is tried again, at most three times.
        """
        if self.running:
            raise MailhouseError("already running")
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return
            except MailhouseError as exc:
                if attempt == 2 or "in use" not in str(exc).lower():
                    raise
                self._pick_ports()

    def _start_once(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"==== serve started at {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [self.python, "-m", "mailhouse", "--config", str(self.config_path), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,  # own process group: kill() reaches any workers too
            )
        process = self.process

        def exited() -> str | None:
            code = process.poll()
            if code is None:
                return None
            return f"mailhouse serve exited with status {code} during start-up\n{self.log_tail()}"

        def listening() -> bool:
            return all(port_accepts(port) for port in self.ports.values())

        try:
            ready = wait_until(listening, timeout=timeout, interval=0.05, abort=exited)
        except RuntimeError as exc:
            self.process = None
            raise MailhouseError(str(exc)) from None
        if not ready:
            self.kill()
            raise MailhouseError(
                f"mailhouse did not listen on {self.ports} within {timeout}s\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (bounded); SIGKILL the process group if it will not exit.

        Returns the exit status (None if nothing was running).
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return process.returncode
        self._reap_group(process.pid)
        self.process = None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once (a crash, as far as it knows)."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired as exc:
            raise MailhouseError(f"pid {process.pid} survived SIGKILL") from exc
        self.process = None

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the server if it runs (graceful first)."""
        if self.running:
            self.stop()
        elif self.process is not None:
            self._reap_group(self.process.pid)
            self.process = None

    def __enter__(self) -> MailhouseServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Kill anything left in the server's process group (workers of a dead parent)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "server log (tail):\n" + "\n".join(text.splitlines()[-lines:])


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON string escapes are a subset TOML accepts)."""
    return json.dumps(value)
