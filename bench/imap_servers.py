"""The two servers of the IMAP benchmarks, side by side, serving the same generated mail.

- **Dovecot 2.3** (Debian dovecot-imapd): a private instance (tests/helpers/dovecot.py with
  ``imap=True``: own config dir, passwd-file users, ``mail_location = maildir:~/Maildir``) with
  the ``imaps`` listener (implicit TLS, RFC 8314) and the shared certificate. Its process limits
  are raised (`DOVECOT_LIMITS`) so that 500 connections fit: by default a service may have 100
  processes, and Dovecot runs one imap-login process (which also relays the TLS session) and
  one imap process per connection. Everything else is Dovecot's default.
- **mailhouse**: ``python -m mailhouse serve`` (tests/helpers/mailhouse.py) with the ``imaps``
  listener (and ``smtp``, unused), ``[tls]`` = the shared pair, its connection caps raised
  (`MAILHOUSE_LIMITS`, for the same reason), the users made with the CLI and the mail put in
  with ``mailhouse import ADDRESS --maildir DIR`` before it starts.

The mail (bench/imap_mail.py) is written once per user as a Maildir: into Dovecot's home when
Dovecot runs (before it starts; Dovecot builds its index on the first SELECT), else into the
work directory; mailhouse imports those same files.

mailhouse may not serve IMAP yet (its ``[listen] imaps`` is skipped with ``not_built_yet`` until
the IMAP service is wired): then `ImapServers.unavailable` says so and the benchmarks report
Dovecot alone, exiting 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.imap_mail import Generated, write_maildir
from tests.helpers.dovecot import MAIL_GID, MAIL_UID, DovecotPop3
from tests.helpers.mailhouse import MailhouseError, MailhouseServer
from tests.helpers.net import LOOPBACK
from tests.helpers.postfix import make_self_signed

SERVERS = ("mailhouse", "dovecot")
SERVER_CHOICES = {"both": SERVERS, "mailhouse": ("mailhouse",), "dovecot": ("dovecot",)}
DOMAIN = "bench.test"
PASSWORD = "bench-imap-password"  # throwaway accounts on loopback-only test servers
PASSWORD_ENV = "MH_BENCH_IMAP_PASSWORD"
MAILHOUSE_START_TIMEOUT = 20.0  # seconds for mailhouse's imaps port to accept
IMPORT_TIMEOUT = 3600.0  # one `mailhouse import` (100,000 messages)
NOT_BUILT = "not_built_yet"  # what mailhouse logs for a listener it cannot serve yet
DOVECOT_LIMITS = "\n".join(
    [
        "default_process_limit = 1200",  # 100 by default: one imap(-login) process per client
        "default_client_limit = 5000",
        "mail_max_userip_connections = 1000",
    ]
)


# mailhouse's connection caps, raised as Dovecot's process limits are: by default at most 100
# connections per address (and a share of 1,000 per service), which would refuse the memory
# benchmark's 500 connections from 127.0.0.1.
MAILHOUSE_LIMITS = {"max_connections": 10_000, "max_connections_per_ip": 10_000}


class BenchMailhouse(MailhouseServer):
    """The mailhouse of tests/helpers/mailhouse.py with `MAILHOUSE_LIMITS` in its [limits]
    table (which the helper writes itself, so they cannot go into `extra_toml`)."""

    def config_text(self) -> str:
        text = super().config_text()
        limits = "".join(f"{name} = {value}\n" for name, value in MAILHOUSE_LIMITS.items())
        if "\n[limits]\n" in text:
            return text.replace("\n[limits]\n", "\n[limits]\n" + limits, 1)
        return text + "\n[limits]\n" + limits


def add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        choices=tuple(SERVER_CHOICES),
        default="both",
        help="which server(s) to measure (both: side by side, with ratios)",
    )
    parser.add_argument(
        "--mailhouse-toml",
        default="",
        help="more TOML appended to mailhouse's config (e.g. an [imap] table)",
    )


def users_for(count: int, prefix: str = "imap") -> list[str]:
    return [f"{prefix}{i}@{DOMAIN}" for i in range(count)]


@dataclass
class Side:
    """A server that serves IMAP: where, its session id (for CPU and memory), its log."""

    name: str
    port: int
    sid: int
    diagnostics: Callable[[], str]


class ImapServers:
    """Prepares and starts the servers asked for; `sides` holds those that serve IMAP,
    `unavailable` why the others do not."""

    def __init__(
        self, base: Path, servers: tuple[str, ...], users: list[str], mailhouse_toml: str = ""
    ) -> None:
        self.base = base
        self.users = users
        self.cert, self.key = base / "tls" / "cert.pem", base / "tls" / "key.pem"
        make_self_signed(self.cert, self.key, LOOPBACK)
        self.sides: dict[str, Side] = {}
        self.unavailable: dict[str, str] = {}
        self.not_serving: set[str] = set()  # unavailable only because IMAP is not built yet
        self.dovecot: DovecotPop3 | None = None
        self.mailhouse: MailhouseServer | None = None
        if "dovecot" in servers:
            self.dovecot = DovecotPop3(
                dict.fromkeys(users, PASSWORD),
                tls=True,
                cert=(self.cert, self.key),
                base_dir=base / "dovecot",
                imap=True,
                extra_conf=DOVECOT_LIMITS,
            )
        if "mailhouse" in servers:
            tls = f"[tls]\ncert = {json.dumps(str(self.cert))}\nkey = {json.dumps(str(self.key))}\n"
            self.mailhouse = BenchMailhouse(
                base / "mailhouse",
                protocols=("smtp", "imaps"),
                hostname="mx.bench.test",
                extra_toml=tls + "\n" + mailhouse_toml,
            )
            self.mailhouse.add_domain(DOMAIN)
            for user in users:
                self.mailhouse.add_user(user, PASSWORD)

    def fill(self, mail: Callable[[str], Iterator[Generated]]) -> tuple[int, int]:
        """Write every user's mailbox (`mail(user)`) and import it into mailhouse; before
        `start`. (messages, octets) in all."""
        count = octets = 0
        for user in self.users:
            if self.dovecot is not None:
                maildir = self.dovecot.maildir(user)
                n, size = write_maildir(maildir, mail(user), MAIL_UID, MAIL_GID)
            else:
                maildir = self.base / "mail" / user
                n, size = write_maildir(maildir, mail(user))
            count, octets = count + n, octets + size
            if self.mailhouse is not None:
                self.mailhouse.cli(
                    "import", user, "--maildir", str(maildir), timeout=IMPORT_TIMEOUT
                )
        return count, octets

    def start(self) -> None:
        """Start Dovecot (an error is fatal) and mailhouse (an error makes it unavailable)."""
        if self.dovecot is not None:
            dc = self.dovecot
            dc.start()
            assert dc.process is not None
            self.sides["dovecot"] = Side(
                "dovecot", dc.port("imaps"), os.getsid(dc.process.pid), lambda: dc.log_tail(40)
            )
        if self.mailhouse is not None:
            mh = self.mailhouse
            try:
                mh.start(timeout=MAILHOUSE_START_TIMEOUT)
            except MailhouseError as exc:
                self._mailhouse_unavailable(str(exc))
                return
            assert mh.process is not None
            port = mh.port("imaps")
            if not imap_tls_greets(port):
                self._mailhouse_unavailable(f"no IMAP greeting over TLS on {LOOPBACK}:{port}")
                return
            self.sides["mailhouse"] = Side(
                "mailhouse", port, os.getsid(mh.process.pid), lambda: mh.log_tail(40)
            )

    def _mailhouse_unavailable(self, error: str) -> None:
        assert self.mailhouse is not None
        log = self.mailhouse.log_tail(200)
        if NOT_BUILT in log:
            self.not_serving.add("mailhouse")
            self.unavailable["mailhouse"] = (
                "mailhouse does not serve IMAP yet: its log says "
                f"'event=listen.skipped service=imaps reason={NOT_BUILT}'"
            )
        else:
            self.unavailable["mailhouse"] = f"mailhouse's IMAP did not start: {error}"
        self.mailhouse.close()

    def close(self) -> None:
        if self.mailhouse is not None:
            self.mailhouse.close()
        if self.dovecot is not None:
            self.dovecot.stop()


def imap_tls_greets(port: int, timeout: float = 5.0) -> bool:
    """True if LOOPBACK:port completes a TLS handshake and greets with ``* OK``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
            context.wrap_socket(raw) as sock,
        ):
            sock.settimeout(timeout)
            greeting = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"z LOGOUT\r\n")
            return greeting.startswith(b"* OK")
    except OSError:
        return False


def session_pss(sid: int) -> tuple[int, int]:
    """(PSS in KiB summed over every process of session `sid`, how many processes): the
    server's whole memory, each shared page counted once in all (/proc/PID/smaps_rollup)."""
    total = processes = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            if len(fields) < 4 or int(fields[3]) != sid:
                continue
            with open(f"/proc/{entry}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        processes += 1
                        break
        except (OSError, ValueError):
            continue  # exited meanwhile, or a kernel thread without smaps
    return total, processes


def unavailable_lines(servers: ImapServers) -> list[str]:
    return [f"NOT MEASURED: {reason}" for reason in servers.unavailable.values()]


def exit_status(servers: ImapServers, error: str | None) -> bool:
    """True when the run failed: an error, or a server unavailable for another reason than
    IMAP not being built yet."""
    return error is not None or bool(set(servers.unavailable) - servers.not_serving)
