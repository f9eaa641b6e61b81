"""A private Dovecot POP3 (and optionally IMAP) server (Debian dovecot-core, dovecot-pop3d,
dovecot-imapd) as a reference peer.

Everything lives in one directory of its own, so it never touches /etc/dovecot or a system
Dovecot, and several instances can run side by side:

    BASE/dovecot.conf   the whole config (no !include of /etc/dovecot), ``dovecot -F -c``
    BASE/passwd         passwd-file passdb: ``user@domain:{PLAIN}password`` (root:dovecot 0640)
    BASE/run            base_dir (master.pid, login and auth sockets; short path for sun_path)
    BASE/state          state_dir
    BASE/dovecot.log    log_path
    BASE/home/DOMAIN/LOCAL/Maildir   each user's mail (mail_location = maildir:~/Maildir)
    BASE/cert.pem, key.pem           with ``tls=True``: a self-signed pair (or the one given)

Settings (Dovecot 2.3.19.1 as Debian 12 ships it):
- ``protocols = pop3``; the ``pop3`` listener on a free 127.0.0.1 port; with ``tls=True`` also
  ``pop3s`` (implicit TLS) and STLS on ``pop3`` (``ssl = yes``), else ``ssl = no``;
- ``disable_plaintext_auth = no`` (USER/PASS and AUTH PLAIN before STLS, like mailhouse's
  ``[pop3] allow_plaintext_auth = true``), ``auth_mechanisms = plain login``;
- a static userdb: every user is uid/gid 65534 (nobody/nogroup; Dovecot refuses root for mail),
  home ``BASE/home/%d/%n``;
- ``mail_max_userip_connections = 1000`` (the default 10 gives ``[IN-USE]``-like refusals under
  load); ``pop3_uidl_format = %08Xu%08Xv`` (Dovecot's default, stated so it never drifts).

With ``imap=True`` (tests/interop/test_imap_clients.py) it serves IMAP as well:
``protocols = pop3 imap``; an ``imap`` listener on a free 127.0.0.1 port (STARTTLS there with
``tls=True``) and ``imaps`` (implicit TLS) with ``tls=True``; one inbox namespace with
separator ``/`` over the Maildir++ layout, so the IMAP folder ``A/B`` is the directory
``Maildir/.A.B`` (``create_folder``). Without ``imap`` the config is exactly the POP3-only one.

Mail is put in place by writing Maildir files directly (``deliver``), the way a local delivery
agent would: ``new/TIME.MnPpid.mh,S=SIZE,W=VSIZE`` with LF line endings (Dovecot sends CRLF),
owned by uid 65534. ``S=``/``W=`` spare Dovecot a stat and a read to learn the sizes. With
``folder=`` it goes into that folder; with ``flags=`` (Maildir info letters, e.g. ``"S"`` for
\\Seen) straight into ``cur/`` as ``NAME:2,FLAGS``. ``maildir_messages`` reads a folder back
with each message's flags (what a client's changes did to the server).

The server runs in the foreground (``dovecot -F``) in its own session, so stop() (SIGTERM, then
SIGKILL of the whole group) reaches every child. Needs root (Dovecot's master starts as root and
drops privileges per service). Network use is loopback only.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from tests.helpers.net import LOOPBACK, free_ports, wait_until
from tests.helpers.tools import program

MAIL_UID = 65534  # nobody
MAIL_GID = 65534  # nogroup


# Maildir info letters (the "2," part of a cur/ file name) -> IMAP system flags. Lowercase
# letters are Dovecot keywords, which the tests do not use.
MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}


class DovecotError(RuntimeError):
    """Dovecot failed to start or stop; the message carries the command and the log tail."""


def pop3_greets(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> bool:
    """True if host:port accepts a connection and sends a POP3 ``+OK`` greeting."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
            return data.startswith(b"+OK")
    except OSError:
        return False


def imap_greets(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> bool:
    """True if host:port accepts a connection and sends an IMAP ``* OK`` greeting."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"a LOGOUT\r\n")
            return data.startswith(b"* OK")
    except OSError:
        return False


def imap_flags(info: str) -> frozenset[str]:
    """Maildir info letters (``"FS"``) -> IMAP system flags (``{"\\Flagged", "\\Seen"}``)."""
    return frozenset(MAILDIR_FLAGS[letter] for letter in info if letter in MAILDIR_FLAGS)


def maildir_info(name: str) -> str:
    """The flag letters of a Maildir file name (``...:2,FS`` -> ``"FS"``; none -> ``""``)."""
    _, sep, info = name.rpartition(":2,")
    return info if sep else ""


def to_lf(data: bytes) -> bytes:
    """CRLF line endings -> LF (the Maildir convention)."""
    return data.replace(b"\r\n", b"\n")


def to_crlf(data: bytes) -> bytes:
    """Any mix of LF / CRLF line endings -> CRLF (what POP3 sends)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class DovecotPop3:
    """One private Dovecot instance serving POP3 for the given users (see module doc)."""

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        tls: bool = False,
        cert: tuple[Path, Path] | None = None,
        base_dir: Path | None = None,
        extra_conf: str = "",
        imap: bool = False,
    ) -> None:
        """Prepare (nothing runs yet). users: address -> password (addresses user@domain).

        tls: ``ssl = yes`` with a pop3s listener and STLS on pop3; cert: (cert, key) PEM files
        to use (default: a fresh self-signed pair for 127.0.0.1 made with openssl).
        extra_conf: appended verbatim to dovecot.conf (e.g. ``service pop3-login {...}``).
        imap: serve IMAP too (an imap listener, imaps with tls; see module doc).
        """
        if os.geteuid() != 0:
            raise DovecotError("a private Dovecot needs root (its master drops privileges)")
        self.users = dict(users)
        self.tls = tls
        self.imap = imap
        self.extra_conf = extra_conf
        # Under /tmp, short: unix socket paths in base_dir are limited to ~108 bytes.
        self.base = base_dir or Path(tempfile.mkdtemp(prefix="mh-dove-", dir="/tmp"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the mail uid and dovenull must traverse it
        self.config_path = self.base / "dovecot.conf"
        self.passwd_path = self.base / "passwd"
        self.run_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.log_path = self.base / "dovecot.log"
        self.home_root = self.base / "home"
        self.process: subprocess.Popen[bytes] | None = None
        self._delivered = 0
        self.cert: tuple[Path, Path] | None = None
        if tls:
            self.cert = cert or self._self_signed()
        # Two ports without IMAP, as before (the POP3-only instance is unchanged).
        ports = free_ports(4 if imap else 2)
        pop3, pop3s = ports[:2]
        self.ports: dict[str, int] = {"pop3": pop3}
        if tls:
            self.ports["pop3s"] = pop3s
        if imap:
            self.ports["imap"] = ports[2]
            if tls:
                self.ports["imaps"] = ports[3]
        self._write_files()

    # ---------------------------------------------------------------- configuration

    def port(self, protocol: str = "pop3") -> int:
        return self.ports[protocol]

    def _self_signed(self) -> tuple[Path, Path]:
        cert, key = self.base / "cert.pem", self.base / "key.pem"
        argv = [
            program("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "30", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise DovecotError(f"openssl req failed: {result.stderr.strip()}")
        key.chmod(0o600)
        return cert, key

    def config_text(self) -> str:
        pop3s_port = self.ports.get("pop3s", 0)
        lines = [
            "# written by tests/helpers/dovecot.py: a private POP3 instance",
            f"base_dir = {self.run_dir}",
            f"state_dir = {self.state_dir}",
            f"log_path = {self.log_path}",
            f"info_log_path = {self.log_path}",
            "protocols = pop3 imap" if self.imap else "protocols = pop3",
            f"listen = {LOOPBACK}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "mail_location = maildir:~/Maildir",
            "mail_max_userip_connections = 1000",
            "pop3_uidl_format = %08Xu%08Xv",
            f"first_valid_uid = {MAIL_UID}",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {self.passwd_path}",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={MAIL_UID} gid={MAIL_GID} home={self.home_root}/%d/%n",
            "}",
            "service pop3-login {",
            "  inet_listener pop3 {",
            f"    address = {LOOPBACK}",
            f"    port = {self.ports['pop3']}",
            "  }",
            "  inet_listener pop3s {",
            f"    address = {LOOPBACK}",
            f"    port = {pop3s_port}",
            "    ssl = yes" if self.tls else "    ssl = no",
            "  }",
            "}",
            # No LMTP / submission: only the services POP3 (and IMAP) need.
        ]
        if self.imap:
            lines += self._imap_config()
        if self.tls and self.cert is not None:
            cert, key = self.cert
            lines += ["ssl = yes", f"ssl_cert = <{cert}", f"ssl_key = <{key}"]
        else:
            lines += ["ssl = no"]
        if self.extra_conf:
            lines += [self.extra_conf.strip()]
        return "\n".join(lines) + "\n"

    def _imap_config(self) -> list[str]:
        """The IMAP part: listeners, and one namespace with "/" as separator (Dovecot maps it
        to Maildir++'s "." on disk), so clients see ``Projects/2026``, not ``Projects.2026``."""
        return [
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
            "  prefix =",
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            f"    address = {LOOPBACK}",
            f"    port = {self.ports['imap']}",
            "  }",
            "  inet_listener imaps {",
            f"    address = {LOOPBACK}",
            f"    port = {self.ports.get('imaps', 0)}",
            "    ssl = yes" if self.tls else "    ssl = no",
            "  }",
            "}",
        ]

    def _write_files(self) -> None:
        self.config_path.write_text(self.config_text())
        self.passwd_path.write_text(
            "".join(f"{address}:{{PLAIN}}{password}\n" for address, password in self.users.items())
        )
        # The auth process runs as the dovecot user: it must read the passwd-file.
        dovecot_gid = grp.getgrnam("dovecot").gr_gid
        os.chown(self.passwd_path, 0, dovecot_gid)
        self.passwd_path.chmod(0o640)
        self.home_root.mkdir(exist_ok=True)
        for address in self.users:
            self.maildir(address)

    # ---------------------------------------------------------------- mail

    def maildir(self, address: str) -> Path:
        """The user's Maildir (created, owned by the mail uid, if missing)."""
        local, _, domain = address.partition("@")
        home = self.home_root / domain / local
        maildir = home / "Maildir"
        if not maildir.is_dir():
            for path in (self.home_root / domain, home, maildir):
                path.mkdir(exist_ok=True)
                os.chown(path, MAIL_UID, MAIL_GID)
            for sub in ("new", "cur", "tmp"):
                (maildir / sub).mkdir(exist_ok=True)
                os.chown(maildir / sub, MAIL_UID, MAIL_GID)
        return maildir

    def folder_dir(self, address: str, folder: str | None = None) -> Path:
        """The Maildir++ directory of an IMAP folder (None or INBOX: the Maildir itself)."""
        maildir = self.maildir(address)
        if folder is None or folder.upper() == "INBOX":
            return maildir
        if "." in folder or folder.startswith("/") or folder.endswith("/"):
            raise ValueError(f"folder names here are /-separated without dots: {folder!r}")
        return maildir / ("." + folder.replace("/", "."))

    def create_folder(self, address: str, folder: str) -> Path:
        """Create an IMAP folder (and its parents) as Maildir++ subfolders owned by the mail
        uid; returns its directory. Existing folders are left as they are."""
        parts = folder.split("/")
        path = self.folder_dir(address, folder)
        for depth in range(1, len(parts) + 1):
            path = self.folder_dir(address, "/".join(parts[:depth]))
            for sub in (path, path / "new", path / "cur", path / "tmp"):
                sub.mkdir(exist_ok=True)
                os.chown(sub, MAIL_UID, MAIL_GID)
            marker = path / "maildirfolder"  # Maildir++: "this is a folder, not a root"
            if not marker.exists():
                marker.touch()
                os.chown(marker, MAIL_UID, MAIL_GID)
        return path

    def deliver(
        self,
        address: str,
        messages: Iterable[bytes],
        *,
        folder: str | None = None,
        flags: str = "",
    ) -> list[bytes]:
        """Write messages into the user's Maildir new/ (in order); returns them as POP3 will
        send them (CRLF line endings). Each file is written to tmp/ and renamed into new/.
        folder: an IMAP folder (``create_folder`` first) instead of INBOX; flags: Maildir info
        letters, e.g. "S": the file goes to cur/ as ``NAME:2,S`` (a message already seen)."""
        maildir = self.folder_dir(address, folder)
        if not maildir.is_dir():
            raise ValueError(f"no folder {folder!r} for {address}: create_folder it first")
        sent: list[bytes] = []
        now = int(time.time())
        for data in messages:
            self._delivered += 1
            lf = to_lf(data)
            crlf = to_crlf(data)
            name = f"{now}.M{self._delivered}P{os.getpid()}.mh,S={len(lf)},W={len(crlf)}"
            tmp = maildir / "tmp" / name
            tmp.write_bytes(lf)
            os.chown(tmp, MAIL_UID, MAIL_GID)
            if flags:
                tmp.rename(maildir / "cur" / f"{name}:2,{''.join(sorted(flags))}")
            else:
                tmp.rename(maildir / "new" / name)
            sent.append(crlf)
        return sent

    def count(self, address: str) -> int:
        """Messages in the user's Maildir (new + cur)."""
        maildir = self.maildir(address)
        return sum(1 for sub in ("new", "cur") for p in (maildir / sub).iterdir() if p.is_file())

    def messages(self, address: str) -> list[bytes]:
        """Every message of the user, CRLF, ordered by file name (= delivery order here)."""
        maildir = self.maildir(address)
        files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir() if p.is_file()]
        files.sort(key=lambda p: int(p.name.split(".M", 1)[1].split("P", 1)[0]))
        return [to_crlf(p.read_bytes()) for p in files]

    def maildir_messages(
        self, address: str, folder: str | None = None
    ) -> list[tuple[frozenset[str], bytes]]:
        """Every message of a folder as (IMAP system flags, bytes with CRLF), ordered by file
        name. Files Dovecot wrote itself (an APPEND, a flag change) are included."""
        path = self.folder_dir(address, folder)
        files = sorted(
            (p for sub in ("new", "cur") for p in (path / sub).iterdir() if p.is_file()),
            key=lambda p: p.name,
        )
        return [(imap_flags(maildir_info(p.name)), to_crlf(p.read_bytes())) for p in files]

    def folders(self, address: str) -> list[str]:
        """The IMAP folder names under the user's Maildir (INBOX first)."""
        maildir = self.maildir(address)
        subs = sorted(
            p.name[1:].replace(".", "/")
            for p in maildir.iterdir()
            if p.is_dir() and p.name.startswith(".") and (p / "cur").is_dir()
        )
        return ["INBOX", *subs]

    # ---------------------------------------------------------------- process

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """``dovecot -F -c CONF``; returns once every listener greets (+OK, or * OK)."""
        if self.running:
            raise DovecotError("already running")
        with (self.base / "stderr.log").open("ab") as err:
            self.process = subprocess.Popen(
                [program("dovecot"), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        process = self.process

        def exited() -> str | None:
            code = process.poll()
            if code is None:
                return None
            return f"dovecot exited with status {code} during start-up\n{self.log_tail()}"

        def greets(name: str, port: int) -> bool:
            if name == "pop3s":
                return _tls_port_accepts(port)
            if name == "imaps":
                return _tls_port_accepts(port, greeting=b"* OK")
            if name == "imap":
                return imap_greets(port)
            return pop3_greets(port)

        def listening() -> bool:
            return all(greets(name, port) for name, port in self.ports.items())

        try:
            ready = wait_until(listening, timeout=timeout, interval=0.1, abort=exited)
        except RuntimeError as exc:
            self.process = None
            raise DovecotError(str(exc)) from None
        if not ready:
            self.stop()
            raise DovecotError(f"dovecot did not listen on {self.ports}\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master and wait (bounded); SIGKILL the whole group if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        self.process = None

    def close(self, remove: bool = True) -> None:
        """Stop, and remove the directory (kept when remove=False, e.g. after a failure)."""
        self.stop()
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> DovecotPop3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(remove=exc_type is None)

    def log_tail(self, lines: int = 60) -> str:
        parts: list[str] = []
        for path in (self.base / "stderr.log", self.log_path):
            try:
                text = path.read_bytes().decode(errors="replace")
            except FileNotFoundError:
                continue
            parts.append(f"{path.name} (tail):\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or "(no dovecot log)"

    def logins(self, address: str, service: str = "imap") -> list[str]:
        """The log's successful login lines of a user on one service (``imap``/``pop3``); each
        says ``TLS`` when the session was encrypted (STARTTLS/STLS or implicit), while loopback
        plaintext shows as ``secured`` (Dovecot trusts 127.0.0.1)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        marker = f"{service}-login: Info: Login: user=<{address}>,"
        return [line for line in text.splitlines() if marker in line]

    def version(self) -> str:
        result = subprocess.run(
            [program("dovecot"), "--version"], capture_output=True, text=True, timeout=30,
            check=False,
        )
        return result.stdout.strip()


def _tls_port_accepts(port: int, greeting: bytes = b"+OK") -> bool:
    """True if an implicit-TLS port completes a handshake and greets (POP3 +OK by default)."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=2.0) as raw,
            context.wrap_socket(raw) as sock,
        ):
            sock.settimeout(2.0)
            return sock.recv(512).startswith(greeting)
    except OSError:
        return False
