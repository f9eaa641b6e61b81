"""A private Postfix instance (the Debian package) for interop tests and benchmarks.

Everything lives in one directory of its own, so it never touches /etc/postfix or a system
Postfix, and several instances can run side by side:

    BASE/etc/main.cf, master.cf   config_directory (postfix -c BASE/etc ...)
    BASE/queue                    queue_directory (created by `postfix start`)
    BASE/data                     data_directory, owned by the postfix user
    BASE/log/maillog              maillog_file via postlogd, so no syslog is needed
    BASE/vmail                    virtual_mailbox_base, for virtual(8) maildir delivery

master.cf runs every service with chroot=n, and smtpd on 127.0.0.1:PORT only. Domains in
`relay` are sent with smtp(8) to ``[127.0.0.1]:port`` through an inline transport map (no DNS),
with ``smtp_tls_security_level = may``; addresses in `mailboxes` are delivered by virtual(8) to
maildirs (``new/`` files, fsynced by Postfix) owned by a static uid ("nobody").

Optional extras (keyword arguments; off by default, so existing users are unaffected):
- ``relayhost=(host, port)``: every domain not handled otherwise goes to ``[host]:port`` by
  smtp(8) (``relayhost``, ``default_transport = smtp``), the normal qmgr/smtp path.
- ``submission=Submission(users={...})``: a second smtpd on its own loopback port that takes mail
  only after SASL AUTH over TLS, as a submission service would: implicit TLS (RFC 8314, port
  465 style, ``smtpd_tls_wrappermode``) or STARTTLS required (587 style); Cyrus SASL with a
  sasldb (``saslpasswd2``, Debian package sasl2-bin; PLAIN and LOGIN); an authenticated login
  may use only its own address as the envelope sender (``reject_sender_login_mismatch``). The
  certificate is the given PEM pair, or a self-signed RSA one made with openssl.

Gotchas this handles (Postfix 3.7 as Debian 12 ships it):
- `maillog_file_prefixes` must contain the log directory, or postlogd refuses to open it.
- data_directory must belong to the postfix user; virtual(8)'s static uid must be able to reach
  and write virtual_mailbox_base, so BASE is world-searchable (0755) and vmail belongs to it.
- Postfix daemons drop to the postfix user, and unix sockets have a ~108-byte path limit, so BASE
  is a short directory directly under /tmp, not pytest's deep tmp_path.
- `postfix stop` only signals master; `stop()` waits for master to exit before removing files.
- `postfix check` prints nothing without a TTY; on start failure `diagnose()` runs it under
  script(1) and returns its output together with the maillog.
- `virtual_mailbox_limit` must not be smaller than `message_size_limit` (virtual(8) refuses to
  start otherwise); both are set explicitly.
- Cyrus SASL reads ``smtpd.conf`` from ``cyrus_sasl_config_path``; a login ``user@realm``
  is looked up in the sasldb as user ``user`` in realm ``realm`` (``saslpasswd2 -u realm``);
  smtpd runs as postfix and must read the sasldb (root:postfix 0640: `postfix check` warns about
  files under config_directory not owned by root).

Needs root (postfix start). Network use is loopback only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.helpers.maildir import count_maildir
from tests.helpers.net import LOOPBACK, free_port, port_accepts, smtp_greets, wait_until
from tests.helpers.tools import program

# The services a relay / virtual-delivery instance needs, all with chroot=n (column 5).
# Debian's master.cf.proto also lists pipe(8) transports for users that do not exist here.
_MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Queue subdirectories that hold mail not yet delivered.
_PENDING_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# "QUEUEID: to=<rcpt>, relay=..., ..., status=sent (text)" from smtp(8), virtual(8), error(8).
_DELIVERY_LINE = re.compile(
    r"postfix/(?P<agent>[a-z]+)\[\d+\]: (?P<queue_id>[0-9A-F]+): to=<(?P<to>[^>]*)>,"
    r"(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]+), .*?status=(?P<status>[a-z]+)"
    r" \((?P<text>.*)\)$"
)

DEFAULT_MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt logged by a Postfix delivery agent."""

    queue_id: str
    to: str
    relay: str
    status: str  # sent | deferred | bounced | expired
    text: str
    agent: str  # smtp | virtual | error | ...


@dataclass(frozen=True)
class Submission:
    """A submission-style smtpd that requires SASL AUTH over TLS (see the module docstring).

    users: login address -> password, stored in a Cyrus sasldb.
    port: loopback port (default: a free one).
    implicit_tls: True for implicit TLS (RFC 8314, "465"), False for STARTTLS before AUTH
        ("587", ``smtpd_tls_security_level = encrypt``).
    cert_file, key_file: PEM certificate and key; both None makes a self-signed RSA-2048 pair.
    sender_login_match: refuse envelope senders other than the login itself.
    """

    users: Mapping[str, str]
    port: int | None = None
    implicit_tls: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None
    sender_login_match: bool = True


class PostfixError(RuntimeError):
    """Postfix failed to start, stop, or deliver in time; the message carries its logs."""


class PostfixInstance:
    """A private Postfix with its own config, queue and data directories.

    Use as a context manager, or call start() / close() yourself::

        with PostfixInstance(relay={"example.test": 2525}) as pf:
            # submit to 127.0.0.1:pf.port; Postfix relays example.test to 127.0.0.1:2525
            pf.wait_for_deliveries(1)
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        relay: Mapping[str, int] | None = None,
        mailboxes: Iterable[str] = (),
        myhostname: str = "postfix.interop.test",
        extra_main: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        relayhost: tuple[str, int] | None = None,
        submission: Submission | None = None,
    ) -> None:
        """Prepare (but do not start) an instance.

        port: smtpd port on 127.0.0.1 (default: a free one).
        relay: domain → port on 127.0.0.1 that Postfix relays the domain to, as its "MX".
        mailboxes: addresses delivered by virtual(8) to BASE/vmail/<domain>/<local>/ (maildir).
        extra_main: more main.cf settings (override the defaults).
        base_dir: where to put everything (default: a new short directory under /tmp, removed
        by close()). Must be short and world-searchable; see the module docstring.
        relayhost: (loopback host, port) that every other domain is relayed to by smtp(8).
        submission: also run an authenticated submission smtpd (see `Submission`).
        """
        self.port = port if port is not None else free_port()
        self.relay = dict(relay or {})
        self.mailboxes = list(mailboxes)
        self.myhostname = myhostname
        self.extra_main = dict(extra_main or {})
        self._owns_base = base_dir is None
        self.base = (
            base_dir
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="mh-pfx-", dir="/tmp"))
        )
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.data_dir = self.base / "data"
        self.log_dir = self.base / "log"
        self.maillog_path = self.log_dir / "maillog"
        self.vmail_dir = self.base / "vmail"
        self.relayhost = relayhost
        self.submission = submission
        self.submission_port = (
            (submission.port if submission.port is not None else free_port())
            if submission is not None
            else None
        )
        self.sasl_dir = self.config_dir / "sasl"
        self.tls_dir = self.config_dir / "tls"
        self._postfix = program("postfix")
        self._started = False

    # ---------------------------------------------------------------- configuration

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings, as an ordered mapping (extra_main applied last)."""
        transport = ", ".join(
            f"{domain}=smtp:[{LOOPBACK}]:{port}" for domain, port in self.relay.items()
        )
        settings: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.myhostname,
            "mydomain": self.myhostname.partition(".")[2] or self.myhostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "relay_domains": " ".join(self.relay),
            "transport_maps": f"inline:{{ {transport} }}" if transport else "",
            # Mail to any other domain fails at once instead of looking up MX records.
            "default_transport": "error:mailhouse test instance: no route outside 127.0.0.1",
            "relayhost": "",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "may",
            "smtp_tls_loglevel": "1",
            "smtputf8_enable": "yes",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.log_dir),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "message_size_limit": str(DEFAULT_MESSAGE_SIZE_LIMIT),
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            # Retry quickly after a deferral (e.g. while a test restarts the next hop).
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtpd_banner": "$myhostname ESMTP",
        }
        if self.relayhost is not None:
            host, port = self.relayhost
            settings |= {"relayhost": f"[{host}]:{port}", "default_transport": "smtp"}
        if self.submission is not None:
            settings |= {
                "smtpd_sasl_type": "cyrus",
                "cyrus_sasl_config_path": str(self.sasl_dir),
                "smtpd_sasl_path": "smtpd",
                "smtpd_sasl_local_domain": "",
                "smtpd_sasl_security_options": "noanonymous",
                "smtpd_tls_cert_file": str(self.tls_cert_file),
                "smtpd_tls_key_file": str(self.tls_key_file),
                "smtpd_tls_loglevel": "0",
            }
        if self.mailboxes:
            nobody = pwd.getpwnam("nobody")
            maps = ", ".join(
                f"{addr}={addr.rpartition('@')[2]}/{addr.rpartition('@')[0]}/"
                for addr in self.mailboxes
            )
            settings |= {
                "virtual_mailbox_domains": " ".join(
                    dict.fromkeys(a.rpartition("@")[2] for a in self.mailboxes)
                ),
                "virtual_mailbox_maps": f"inline:{{ {maps} }}",
                "virtual_mailbox_base": str(self.vmail_dir),
                "virtual_uid_maps": f"static:{nobody.pw_uid}",
                "virtual_gid_maps": f"static:{nobody.pw_gid}",
                "virtual_minimum_uid": str(min(100, nobody.pw_uid)),
            }
        settings |= self.extra_main
        return settings

    def master_cf(self) -> str:
        smtpd = f"{LOOPBACK}:{self.port} inet n - n - - smtpd\n"
        return smtpd + self._submission_service() + _MASTER_SERVICES

    @property
    def tls_cert_file(self) -> Path:
        sub = self.submission
        if sub is not None and sub.cert_file is not None:
            return sub.cert_file
        return self.tls_dir / "cert.pem"

    @property
    def tls_key_file(self) -> Path:
        sub = self.submission
        if sub is not None and sub.key_file is not None:
            return sub.key_file
        return self.tls_dir / "key.pem"

    def _submission_service(self) -> str:
        sub = self.submission
        if sub is None:
            return ""
        # No whitespace: a master.cf -o value is one word.
        logins = ",".join(f"{login}={login}" for login in sub.users)
        options = [
            "syslog_name=postfix/submission",
            "smtpd_sasl_auth_enable=yes",
            "smtpd_tls_auth_only=yes",
            "smtpd_client_restrictions=permit_sasl_authenticated,reject",
            "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            "smtpd_recipient_restrictions=permit_sasl_authenticated,reject",
        ]
        if sub.implicit_tls:
            options += ["smtpd_tls_wrappermode=yes", "smtpd_tls_security_level=encrypt"]
        else:
            options += ["smtpd_tls_security_level=encrypt"]
        if sub.sender_login_match:
            options += [
                f"smtpd_sender_login_maps=inline:{{{logins}}}",
                "smtpd_sender_restrictions=reject_sender_login_mismatch",
            ]
        lines = [f"{LOOPBACK}:{self.submission_port} inet n - n - - smtpd"]
        lines += [f"  -o {option}" for option in options]
        return "\n".join(lines) + "\n"

    def _write_submission_files(self) -> None:
        """The Cyrus SASL config + sasldb and (unless given) a self-signed certificate."""
        sub = self.submission
        if sub is None:
            return
        pw = pwd.getpwnam("postfix")
        self.sasl_dir.mkdir(parents=True, exist_ok=True)
        sasldb = self.sasl_dir / "sasldb2"
        (self.sasl_dir / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            "mech_list: PLAIN LOGIN\n"
            f"sasldb_path: {sasldb}\n"
        )
        saslpasswd2 = program("saslpasswd2")
        for login, password in sub.users.items():
            user, _, realm = login.rpartition("@")
            argv = [saslpasswd2, "-p", "-c", "-f", str(sasldb)]
            argv += ["-u", realm, user] if user else [login]
            result = subprocess.run(
                argv,
                input=password,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if result.returncode != 0:
                raise PostfixError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        # root-owned like everything under config_directory (postfix check warns otherwise),
        # readable by smtpd through its group.
        os.chown(sasldb, 0, pw.pw_gid)
        sasldb.chmod(0o640)
        if sub.cert_file is None or sub.key_file is None:
            make_self_signed(self.tls_cert_file, self.tls_key_file, self.myhostname)

    def write_config(self) -> None:
        for directory in (self.config_dir, self.queue_dir, self.data_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        if self.mailboxes:
            nobody = pwd.getpwnam("nobody")
            self.vmail_dir.mkdir(exist_ok=True)
            os.chown(self.vmail_dir, nobody.pw_uid, nobody.pw_gid)
        lines = [f"{key} = {value}".rstrip() for key, value in self.main_cf().items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        (self.config_dir / "master.cf").write_text(self.master_cf())
        self._write_submission_files()

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, `postfix start`, and wait until smtpd greets on self.port."""
        self.write_config()
        result = self._run([self._postfix, "-c", str(self.config_dir), "start"], timeout)
        if result.returncode != 0:
            raise PostfixError(f"postfix start failed ({result.returncode}):\n{self.diagnose()}")
        self._started = True
        if not wait_until(lambda: smtp_greets(self.port), timeout=timeout, interval=0.1):
            raise PostfixError(f"Postfix smtpd not answering on {self.port}:\n{self.diagnose()}")
        sub_port = self.submission_port
        if sub_port is not None and not wait_until(
            lambda: port_accepts(sub_port), timeout=timeout, interval=0.1
        ):
            raise PostfixError(
                f"Postfix submission not accepting on {sub_port}:\n{self.diagnose()}"
            )

    def stop(self, timeout: float = 15.0) -> None:
        """`postfix stop`, then wait (bounded) for master to exit; kill it if it will not."""
        if not self._started:
            return
        pid = self.master_pid()
        self._run([self._postfix, "-c", str(self.config_dir), "stop"], timeout)
        if pid is not None and not wait_until(lambda: not pid_alive(pid), timeout, 0.05):
            self._run([self._postfix, "-c", str(self.config_dir), "abort"], timeout)
            if not wait_until(lambda: not pid_alive(pid), 5.0, 0.05):
                # master runs in its own session; its children share the process group.
                _killpg(pid)
                wait_until(lambda: not pid_alive(pid), 5.0, 0.05)
        self._started = False

    def close(self) -> None:
        """Stop, and remove the directory if this instance created it."""
        try:
            self.stop()
        finally:
            if self._owns_base:
                shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------- observation

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def deliveries(self) -> list[Delivery]:
        """Every delivery attempt in the maillog, in order."""
        found: list[Delivery] = []
        for line in self.maillog().splitlines():
            match = _DELIVERY_LINE.search(line)
            if match is not None:
                found.append(
                    Delivery(
                        queue_id=match["queue_id"],
                        to=match["to"],
                        relay=match["relay"],
                        status=match["status"],
                        text=match["text"],
                        agent=match["agent"],
                    )
                )
        return found

    def sent(self) -> list[Delivery]:
        return [d for d in self.deliveries() if d.status == "sent"]

    def pending_count(self) -> int:
        """Messages still in the queue (maildrop, incoming, active, deferred, hold)."""
        total = 0
        for name in _PENDING_QUEUES:
            directory = self.queue_dir / name
            if directory.is_dir():
                total += sum(len(files) for _, _, files in os.walk(directory))
        return total

    def wait_for_deliveries(
        self, count: int, timeout: float = 60.0, to: str | None = None
    ) -> list[Delivery]:
        """Wait until at least `count` deliveries (to `to`, if given) have status=sent.

        Raises PostfixError with the maillog if that takes longer than `timeout`; a bounce
        (status=bounced or expired) stops the wait early: it will not turn into a delivery.
        """

        def sent() -> list[Delivery]:
            return [d for d in self.sent() if to is None or d.to == to]

        def bounced() -> str | None:
            bad = [d for d in self.deliveries() if d.status in ("bounced", "expired")]
            if bad:
                return f"Postfix bounced: {bad}\n{self.maillog()[-4000:]}"
            return None

        try:
            ok = wait_until(lambda: len(sent()) >= count, timeout, 0.1, abort=bounced)
        except RuntimeError as exc:
            raise PostfixError(str(exc)) from None
        if not ok:
            raise PostfixError(
                f"only {len(sent())} of {count} deliveries after {timeout}s;"
                f" {self.pending_count()} queued\n{self.maillog()[-4000:]}"
            )
        return sent()

    def wait_for_queue_ids(self, queue_ids: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until every queue id has a status=sent delivery; raise with logs if not."""
        wanted = set(queue_ids)

        def done() -> bool:
            return wanted <= {d.queue_id for d in self.sent()}

        def failed() -> str | None:
            bad = [d for d in self.deliveries() if d.queue_id in wanted and d.status == "bounced"]
            return f"Postfix bounced: {bad}\n{self.maillog()[-4000:]}" if bad else None

        try:
            ok = wait_until(done, timeout, 0.1, abort=failed)
        except RuntimeError as exc:
            raise PostfixError(str(exc)) from None
        if not ok:
            missing = wanted - {d.queue_id for d in self.sent()}
            raise PostfixError(
                f"queue ids {sorted(missing)} not delivered after {timeout}s\n"
                f"{self.maillog()[-4000:]}"
            )

    def mailbox_dir(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.vmail_dir / domain / local

    def mailbox_count(self, address: str) -> int:
        """Messages virtual(8) has delivered to `address` (new/ + cur/)."""
        return count_maildir(self.mailbox_dir(address))

    def clear_mailbox(self, address: str) -> None:
        shutil.rmtree(self.mailbox_dir(address), ignore_errors=True)

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now (postqueue -f)."""
        self._run([program("postqueue"), "-c", str(self.config_dir), "-f"], 15.0)

    def tls_used(self, port: int) -> bool:
        """True if smtp(8) logged a TLS connection to 127.0.0.1:port (smtp_tls_loglevel=1)."""
        marker = f"TLS connection established to {LOOPBACK}[{LOOPBACK}]:{port}"
        return marker in self.maillog()

    def diagnose(self) -> str:
        """`postfix check` output (it needs a TTY to print, hence script(1)) plus the maillog."""
        parts: list[str] = []
        script = shutil.which("script")
        if script is not None:
            cmd = f"{self._postfix} -c {self.config_dir} check"
            result = self._run([script, "-qec", cmd, "/dev/null"], 30.0)
            parts.append(f"postfix check -> {result.returncode}\n{result.stdout}{result.stderr}")
        parts.append(f"maillog:\n{self.maillog()[-6000:]}")
        return "\n".join(parts)

    @staticmethod
    def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def make_self_signed(cert_file: Path, key_file: Path, common_name: str) -> None:
    """A self-signed RSA-2048 certificate and key (PEM) for `common_name`, made with openssl.

    The key is 0600 and owned by the caller (root): Postfix opens it before dropping
    privileges; the certificate is world-readable.
    """
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        program("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-days", "30", "-subj", f"/CN={common_name}",
        "-addext", f"subjectAltName=DNS:{common_name}",
        "-keyout", str(key_file), "-out", str(cert_file),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise PostfixError(f"openssl req failed: {result.stderr.strip()}")
    key_file.chmod(0o600)
    cert_file.chmod(0o644)


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, e.g. a daemon whose reaper is slow, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
