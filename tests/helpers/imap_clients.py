"""Real IMAP clients (Debian isync's mbsync, offlineimap3, curl) run against a server on
127.0.0.1, each with a private configuration in a work directory of its own.

Nothing is read from or written to the caller's home: every run gets ``HOME=WORK/home`` and an
explicit config file (``mbsync -c``, ``offlineimap -c``, ``curl -q -K``), so a developer's
~/.mbsyncrc, ~/.offlineimaprc or ~/.curlrc never changes what a test sees. Passwords go into
those files (mode 0600), not onto the command line.

TLS (`TlsMode`): ``"implicit"`` (an imaps port), ``"starttls"`` (STARTTLS on the imap port,
required: a client that cannot upgrade fails) or ``"plain"`` (no TLS at all). The test servers'
certificates are self-signed, so each driver takes ``cafile``, the server's certificate, and
trusts exactly it (mbsync ``CertificateFile`` with ``SystemCertificates no``, offlineimap
``sslcacertfile``, curl ``--cacert``). Without ``cafile``: curl ``--insecure`` (or the system
CAs), offlineimap the system CAs; mbsync has no "verification off", so it requires ``cafile``.
offlineimap3 (Debian 0.0~git20211018) verifies only with implicit TLS: after STARTTLS it calls
imaplib2's ``starttls()`` without its CA file, so any certificate is accepted there (a client
quirk; the tests check on the server side that the session was encrypted).

mbsync (`mbsync_sync`), isync 1.4:
    WORK/mbsyncrc        one IMAPAccount/IMAPStore ("far"), one MaildirStore ("near") and one
                         Channel: Patterns *, Sync All, Create Both, Expunge Both, Remove None,
                         SyncState * (the state lives in each local folder)
    WORK/mail/INBOX      the local Inbox; other folders WORK/mail/NAME (SubFolders Verbatim,
                         so ``A/B`` is WORK/mail/A/B)
  mbsync writes an ``X-TUID:`` header of its own at the end of the header of each message it
  stores locally and of each message it uploads: compare messages without it.
offlineimap3 (`offlineimap_sync`), one-shot (``-o``), basic UI, one connection, a hang
before login over STARTTLS retried (a client race; see the function):
    WORK/offlineimaprc   one account, a Maildir local repository, an IMAP remote one
    WORK/meta/           offlineimap's status (metadata) directory
    WORK/mail/INBOX      local folders, WORK/mail/NAME (offlineimap's local separator is ".",
                         so ``A/B`` is WORK/mail/A.B)
curl (`curl_imap`): one request per run, body to a file, ``-v`` trace as the log.

Every driver returns a `ClientRun`: argv, exit status, the combined log, the local Maildir root
(sync clients) and what curl wrote. A run is bounded by ``timeout`` (the process is killed).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.helpers.tools import program

TlsMode = Literal["starttls", "implicit", "plain"]

RUN_TIMEOUT = 60.0
# offlineimap: how long a run may show no login before it counts as the STARTTLS hang, and
# how many runs a sync gets (see offlineimap_sync).
OFFLINEIMAP_STUCK_AFTER = 3.0
OFFLINEIMAP_ATTEMPTS = 5


@dataclass(frozen=True)
class ImapAccount:
    """Where and how to log in: host:port, a user, a password and a TLS mode."""

    host: str
    port: int
    user: str
    password: str
    tls: TlsMode
    cafile: Path | None = None  # the server's certificate, trusted as its own CA

    def __post_init__(self) -> None:
        if not self.host.startswith("127."):
            raise ValueError(f"loopback only, not {self.host}")


@dataclass
class ClientRun:
    """One client run: what was run, how it ended, its log, and where its mail went."""

    argv: list[str]
    returncode: int
    log: str
    maildir: Path | None = None  # sync clients: the local Maildir root
    output: bytes = b""  # curl: what it wrote (the response body)
    timed_out: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        state = "timed out" if self.timed_out else f"exited {self.returncode}"
        return f"{' '.join(self.argv)} {state}\n{self.log}"


def _private_env(work: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "TMPDIR": str(home),
    }


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _run(argv: list[str], work: Path, timeout: float) -> tuple[int, bytes, str, bool]:
    """(status, stdout, stderr+stdout as text, timed out) of one bounded run in `work`."""
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            env=_private_env(work),
            cwd=work,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        err = exc.stderr or b""
        return -9, out, (err + out).decode(errors="replace"), True
    log = (result.stderr + result.stdout).decode(errors="replace")
    return result.returncode, result.stdout, log, False


def _quote(value: str) -> str:
    """A double-quoted string for mbsync's config (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------- mbsync


def mbsync_config(account: ImapAccount, mail: Path) -> str:
    """The mbsyncrc text (see module doc)."""
    ssl_type = {"implicit": "IMAPS", "starttls": "STARTTLS", "plain": "None"}[account.tls]
    trust: list[str] = []
    if account.tls != "plain":
        if account.cafile is None:
            raise ValueError("mbsync needs the server's certificate (cafile) for TLS")
        trust = ["SystemCertificates no", f"CertificateFile {account.cafile}"]
    return "\n".join(
        [
            "IMAPAccount far",
            f"Host {account.host}",
            f"Port {account.port}",
            f"User {_quote(account.user)}",
            f"Pass {_quote(account.password)}",
            f"SSLType {ssl_type}",
            *trust,
            "Timeout 20",
            "PipelineDepth 1",
            "",
            "IMAPStore far",
            "Account far",
            "",
            "MaildirStore near",
            f"Path {mail}/",
            f"Inbox {mail}/INBOX",
            "SubFolders Verbatim",
            "",
            "Channel sync",
            "Far :far:",
            "Near :near:",
            "Patterns *",
            "Sync All",
            "Create Both",
            "Expunge Both",
            "Remove None",
            "SyncState *",
            "",
        ]
    )


def mbsync_sync(account: ImapAccount, work: Path, *, timeout: float = RUN_TIMEOUT) -> ClientRun:
    """``mbsync -c WORK/mbsyncrc -V sync``: both directions, all folders. `work` may be
    reused: the sync state in WORK/mail makes a second run propagate local changes."""
    mail = work / "mail"
    mail.mkdir(parents=True, exist_ok=True)
    rc = _write_private(work / "mbsyncrc", mbsync_config(account, mail))
    argv = [program("mbsync"), "-c", str(rc), "-V", "sync"]
    status, _out, log, timed_out = _run(argv, work, timeout)
    return ClientRun(argv, status, log, maildir=mail, timed_out=timed_out)


def mbsync_folder(root: Path, folder: str) -> Path:
    """Where mbsync keeps an IMAP folder locally (SubFolders Verbatim)."""
    return root / ("INBOX" if folder.upper() == "INBOX" else folder)


# ------------------------------------------------------------------------------- offlineimap


def offlineimap_config(account: ImapAccount, mail: Path, meta: Path) -> str:
    """The offlineimaprc text (see module doc)."""
    lines = [
        "[general]",
        "accounts = main",
        f"metadata = {meta}",
        "maxsyncaccounts = 1",
        "ui = basic",
        "",
        "[Account main]",
        "localrepository = near",
        "remoterepository = far",
        "",
        "[Repository near]",
        "type = Maildir",
        f"localfolders = {mail}",
        "",
        "[Repository far]",
        "type = IMAP",
        f"remotehost = {account.host}",
        f"remoteport = {account.port}",
        f"remoteuser = {account.user}",
        f"remotepass = {account.password}",
        "maxconnections = 1",
        "holdconnectionopen = no",
        "timeout = 20",
        f"ssl = {'yes' if account.tls == 'implicit' else 'no'}",
        f"starttls = {'yes' if account.tls == 'starttls' else 'no'}",
    ]
    if account.tls != "plain":
        if account.cafile is not None:
            lines.append(f"sslcacertfile = {account.cafile}")
        else:
            lines.append("sslcacertfile = OS-DEFAULT")
    return "\n".join(lines) + "\n"


def _offlineimap_attempt(
    argv: list[str], work: Path, timeout: float, stuck_after: float
) -> tuple[int, str, bool, bool]:
    """One offlineimap run, its output in WORK/offlineimap.log: (status, log, timed out,
    stuck), where stuck means killed because the log still ended at "Establishing
    connection" (no login yet) `stuck_after` seconds after the start, dead by a signal with
    the log ending there, or failed with imaplib2's "Failed to start TLS connection"."""
    log_path = work / "offlineimap.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_private_env(work),
            cwd=work,
        )
        started = time.monotonic()
        stuck = timed_out = False
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                timed_out = True
                break
            if elapsed >= stuck_after:
                lines = log_path.read_bytes().decode(errors="replace").strip().splitlines()
                if lines and lines[-1].startswith("Establishing connection"):
                    stuck = True
                    break
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        status = process.wait()
    log = log_path.read_bytes().decode(errors="replace")
    if status < 0 and not (stuck or timed_out):
        # The same race can crash imaplib2 instead (SIGSEGV, seen once in a full run): a
        # death by a signal before any login is that symptom too.
        lines = log.strip().splitlines()
        stuck = bool(lines) and lines[-1].startswith("Establishing connection")
    if status != 0 and not (stuck or timed_out) and "Failed to start TLS connection" in log:
        # Or the handshake it races fails: the server drops the connection after the client's
        # TLS alert, and imaplib2 reports "Failed to start TLS connection ... read 0" before
        # any login (seen once in a full run).
        stuck = True
    return status, log, timed_out, stuck


def offlineimap_sync(
    account: ImapAccount,
    work: Path,
    *,
    debug: bool = False,
    timeout: float = RUN_TIMEOUT,
    attempts: int = OFFLINEIMAP_ATTEMPTS,
    stuck_after: float = OFFLINEIMAP_STUCK_AFTER,
) -> ClientRun:
    """``offlineimap -c WORK/offlineimaprc -o -u basic``: one full sync, both directions.

    offlineimap3 may exit 0 after an error in one folder: ``extra["errors"]`` holds the log
    lines that say ERROR, so a caller can require there are none.

    With STARTTLS, imaplib2 (offlineimap3's IMAP library) hangs about one run in ten before
    logging in: it stops and restarts its reader thread around the TLS handshake, and the
    handshake sometimes fails (the server logs a client TLS alert, and no login) or never
    ends. Implicit TLS never did (0 in 60 runs; STARTTLS 1 in ~10, and 0 in 60 with
    ``-d imap``, which slows its threads down). So a run whose log still ends at
    "Establishing connection" after `stuck_after` seconds (a login takes ~50 ms here) is
    killed and run again, up to `attempts` runs; ``extra["retries"]`` counts them. Any other
    failure is returned as it is; a run that makes progress has the whole `timeout`."""
    mail = work / "mail"
    meta = work / "meta"
    for directory in (mail, meta):
        directory.mkdir(parents=True, exist_ok=True)
    rc = _write_private(work / "offlineimaprc", offlineimap_config(account, mail, meta))
    argv = [program("offlineimap"), "-c", str(rc), "-o", "-u", "basic"]
    if debug:  # the IMAP conversation in the log (password included: test accounts only)
        argv += ["-d", "imap"]
    logs: list[str] = []
    for _attempt in range(attempts):
        status, log, timed_out, stuck = _offlineimap_attempt(argv, work, timeout, stuck_after)
        logs.append(log)
        if not stuck:
            break
    errors = "\n".join(line for line in log.splitlines() if "ERROR" in line)
    extra = {"errors": errors, "retries": str(len(logs) - 1)}
    if stuck:
        extra["errors"] = errors or f"stuck before login in all {attempts} attempts"
    if len(logs) > 1:
        log = "".join(f"--- attempt {n} ---\n{text}" for n, text in enumerate(logs, 1))
    return ClientRun(argv, status, log, maildir=mail, timed_out=timed_out, extra=extra)


def offlineimap_folder(root: Path, folder: str) -> Path:
    """Where offlineimap keeps an IMAP folder locally (local separator ".")."""
    return root / folder.replace("/", ".")


# ------------------------------------------------------------------------------- curl


def curl_url(account: ImapAccount, mailbox: str = "", suffix: str = "") -> str:
    """imap(s)://host:port/MAILBOX<suffix>; the mailbox is percent-encoded whole."""
    scheme = "imaps" if account.tls == "implicit" else "imap"
    path = urllib.parse.quote(mailbox, safe="") if mailbox else ""
    if mailbox and suffix:
        path += "/"
    return f"{scheme}://{account.host}:{account.port}/{path}{suffix}"


def curl_imap(
    account: ImapAccount,
    work: Path,
    url: str,
    *,
    request: str | None = None,
    insecure: bool = True,
    timeout: float = RUN_TIMEOUT,
) -> ClientRun:
    """One curl run: GET `url` (list, fetch) or, with `request`, ``-X REQUEST`` (EXAMINE,
    SEARCH...: the untagged responses are the output). Credentials from a ``-K`` config.
    Without ``account.cafile``: ``--insecure``, or the system CAs when insecure=False."""
    work.mkdir(parents=True, exist_ok=True)
    user = account.user.replace("\\", "\\\\").replace('"', '\\"')
    password = account.password.replace("\\", "\\\\").replace('"', '\\"')
    config = _write_private(work / "curlrc", f'user = "{user}:{password}"\n')
    out = work / "curl.out"
    out.unlink(missing_ok=True)
    argv = [
        program("curl"), "-q", "-K", str(config), "-v", "-s", "-S",
        "--max-time", str(int(timeout)), "--connect-timeout", "10", "-o", str(out),
    ]  # fmt: skip
    if account.tls == "starttls":
        argv.append("--ssl-reqd")
    if account.tls != "plain":
        if account.cafile is not None:
            argv += ["--cacert", str(account.cafile)]
        elif insecure:
            argv.append("--insecure")
    if request is not None:
        argv += ["-X", request]
    argv.append(url)
    status, _stdout, log, timed_out = _run(argv, work, timeout + 5)
    body = out.read_bytes() if out.exists() else b""
    return ClientRun(argv, status, log, output=body, timed_out=timed_out)


def curl_list(account: ImapAccount, work: Path) -> ClientRun:
    """``LIST "" *`` (curl's request for a URL without a mailbox)."""
    return curl_imap(account, work, curl_url(account))


def curl_fetch_uid(account: ImapAccount, work: Path, mailbox: str, uid: int) -> ClientRun:
    """The whole message with this UID (``imap://.../MAILBOX/;UID=n``): output is its bytes."""
    return curl_imap(account, work, curl_url(account, mailbox, f";UID={uid}"))


def curl_examine(account: ImapAccount, work: Path, mailbox: str) -> ClientRun:
    """``EXAMINE MAILBOX`` as a custom request: output is the untagged responses."""
    return curl_imap(account, work, curl_url(account), request=f'EXAMINE "{mailbox}"')
