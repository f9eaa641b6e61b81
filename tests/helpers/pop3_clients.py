"""Real POP3 clients (Debian fetchmail 6.4 and getmail6) run against a server on 127.0.0.1.

Each run happens in a private work directory, never touching the caller's home or a system
config, and delivers what it downloads into files there, so a test can compare them byte for
byte with what the server stored:

fetchmail (`run_fetchmail`):
    WORK/home/             HOME and FETCHMAILHOME (fetchmail keeps its lock file there)
    WORK/fetchmailrc       the poll, mode 0600 (fetchmail refuses looser rc files)
    WORK/fetchmail.ids     --idfile: the UIDL list that makes a second keep-mode run fetch
                           nothing new
    WORK/mda.sh            the MDA: ``cat > OUT/<nanoseconds>.<pid>`` (one file per message,
                           in download order)
    WORK/out/              the delivered messages
  The rc file sets ``set invisible`` (no Received header of fetchmail's own), ``no rewrite``
  (no address rewriting) and ``no stripcr`` / ``no forcecr`` (lines as the server sent them, so
  the files keep the server's CRLF), ``no sslcertck`` (the servers' certificates are
  self-signed), and per TLS mode: ``ssl`` (implicit TLS, port 995 style) or no ``ssl`` with
  ``sslproto 'TLS1.2+'`` (fetchmail then *requires* STLS on the plain port, 110 style).
  ``uidl`` (client-side UIDL tracking), ``keep`` / ``no keep``, optional ``fetchall``.
  Run as root, fetchmail delivers through the MDA as FETCHMAILUSER, set to the current user.

getmail6 (`run_getmail`, command ``getmail``):
    WORK/getmail/          --getmaildir (getmail's oldmail-* UIDL state lives here)
    WORK/getmail/getmailrc
    WORK/out/{cur,new,tmp} the Maildir destination
  ``SimplePOP3SSLRetriever`` for implicit TLS, ``SimplePOP3Retriever`` for plain text.
  getmail refuses to deliver into a Maildir as root: run as root, the destination says
  ``user = nobody`` and WORK/out belongs to nobody, so WORK and every directory above it must
  be searchable by nobody (pytest's 0700 tmp_path is not: use a 0755 directory under /tmp,
  e.g. `world_searchable_dir`).
  getmail6 6.18 has **no STLS** for POP3 (only its IMAP retrievers can STARTTLS), so it cannot
  use a plain port that requires STLS. Options: ``delete``, ``read_all``, ``delivered_to =
  false`` and ``received = false`` (no Delivered-To / Received of getmail's own). getmail always
  writes its own ``Return-Path:`` first and drops the message's (it re-generates the message
  with Python's email package), so compare what follows the trace fields
  (tests.helpers.maildir.split_trace).

Both return a `FetchRun`: the exit status, the output and the delivered messages (with CRLF
line endings, in download order). Loopback only; each run is bounded by `timeout`.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.helpers.tools import program

TlsMode = Literal["stls", "implicit", "plain"]

FETCH_TIMEOUT = 120.0


@dataclass(frozen=True)
class Pop3Account:
    """Where and how to log in: 127.0.0.1:port, with STLS, implicit TLS or in plain text."""

    port: int
    user: str
    password: str
    tls: TlsMode
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not self.host.startswith("127."):
            raise ValueError(f"loopback only, not {self.host}")


@dataclass
class FetchRun:
    """One client run: argv, exit status, output, and the messages it delivered (CRLF)."""

    argv: list[str]
    returncode: int
    output: str
    messages: list[bytes] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        return f"{' '.join(self.argv)} exited {self.returncode}\n{self.output}"


def to_crlf(data: bytes) -> bytes:
    """Any mix of LF / CRLF line endings -> CRLF (what POP3 sends)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _rc_quote(value: str) -> str:
    """A fetchmailrc string: double quotes, with backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# ------------------------------------------------------------------------------- fetchmail


def fetchmail_rc(
    account: Pop3Account,
    *,
    mda: Path,
    keep: bool,
    fetchall: bool = False,
    local_user: str | None = None,
) -> str:
    """The fetchmailrc text for one poll (see module doc)."""
    if account.tls == "implicit":
        tls = "ssl sslproto 'TLS1.2+' no sslcertck"
    elif account.tls == "stls":
        tls = "sslproto 'TLS1.2+' no sslcertck"  # STLS is then mandatory
    else:
        tls = "sslproto ''"  # no STLS at all: plaintext USER/PASS
    return (
        "set no syslog\n"
        "set no bouncemail\n"
        "set invisible\n"
        f"poll {account.host} service {account.port} protocol pop3 auth password timeout 30"
        " uidl\n"
        f"  user {_rc_quote(account.user)} there with password {_rc_quote(account.password)}"
        f" is {_rc_quote(local_user or _current_user())} here\n"
        f"  {tls}\n"
        f"  {'keep' if keep else 'no keep'} {'fetchall' if fetchall else 'no fetchall'}\n"
        "  no rewrite no stripcr no forcecr no mimedecode no dropdelivered no dropstatus\n"
        f"  mda {_rc_quote(str(mda))}\n"
    )


def run_fetchmail(
    account: Pop3Account,
    work: Path,
    *,
    keep: bool,
    fetchall: bool = False,
    verbose: bool = True,
    timeout: float = FETCH_TIMEOUT,
) -> FetchRun:
    """Run fetchmail once (no daemon) in `work`; returns what it delivered in this run only.

    fetchmail's exit status: 0 mail was fetched, 1 there was no mail, others are errors
    (the caller decides which it expects). `work` may be reused: the idfile persists, so a
    second keep-mode run skips what the first one saw.
    """
    home = work / "home"
    out = work / "out"
    for directory in (work, home, out):
        directory.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    mda = work / "mda.sh"
    mda.write_text(
        "#!/bin/sh\n"
        "# fetchmail MDA: one file per message, named so that sorting keeps download order\n"
        f'exec cat > "{out}/$(date +%s%N).$$"\n'
    )
    mda.chmod(0o755)
    rc = work / "fetchmailrc"
    rc.write_text(fetchmail_rc(account, mda=mda, keep=keep, fetchall=fetchall))
    rc.chmod(0o600)
    before = {p.name for p in out.iterdir()}
    argv = [
        program("fetchmail"), "--nodetach", "--nosyslog", "--daemon", "0",
        "--fetchmailrc", str(rc), "--idfile", str(work / "fetchmail.ids"),
        "--pidfile", str(home / "fetchmail.pid"),
    ]  # fmt: skip
    if verbose:
        argv.append("--verbose")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "FETCHMAILHOME": str(home),
        "FETCHMAILUSER": _current_user(),
        "LC_ALL": "C",
    }
    result = subprocess.run(
        argv, capture_output=True, env=env, timeout=timeout, check=False, cwd=work
    )
    files = sorted(p for p in out.iterdir() if p.name not in before)
    files.sort(key=lambda p: (int(p.name.split(".")[0]), p.name))
    return FetchRun(
        argv=argv,
        returncode=result.returncode,
        output=(result.stdout + result.stderr).decode(errors="replace"),
        messages=[p.read_bytes() for p in files],
        files=files,
    )


# ------------------------------------------------------------------------------- getmail6


def world_searchable_dir(prefix: str = "mh-pop3-") -> Path:
    """A fresh 0755 directory directly under /tmp (for getmail run as root; remove it after)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def getmail_rc(
    account: Pop3Account,
    *,
    maildir: Path,
    delete: bool,
    read_all: bool,
    deliver_as: str | None = None,
) -> str:
    """The getmailrc text (see module doc). Raises ValueError for STLS, which getmail6
    does not speak over POP3."""
    if account.tls == "stls":
        raise ValueError("getmail6 has no STLS for POP3: use implicit TLS or plain")
    retriever = "SimplePOP3SSLRetriever" if account.tls == "implicit" else "SimplePOP3Retriever"
    return (
        "[retriever]\n"
        f"type = {retriever}\n"
        f"server = {account.host}\n"
        f"port = {account.port}\n"
        f"username = {account.user}\n"
        f"password = {account.password}\n"
        "timeout = 30\n"
        "\n"
        "[destination]\n"
        "type = Maildir\n"
        f"path = {maildir}/\n"
        + (f"user = {deliver_as}\n" if deliver_as else "")
        + "\n"
        "[options]\n"
        "verbose = 2\n"
        f"delete = {'true' if delete else 'false'}\n"
        f"read_all = {'true' if read_all else 'false'}\n"
        "delivered_to = false\n"
        "received = false\n"
    )


def run_getmail(
    account: Pop3Account,
    work: Path,
    *,
    delete: bool,
    read_all: bool = False,
    timeout: float = FETCH_TIMEOUT,
) -> FetchRun:
    """Run getmail once in `work`; returns what it delivered in this run only.

    getmail's exit status is 0 on success (also when there was nothing new). `work` may be
    reused: getmail's oldmail file (UIDLs it has seen) persists, so with read_all=False a second
    keep-mode run downloads nothing.
    """
    gdir = work / "getmail"
    out = work / "out"
    for directory in (work, gdir, out, out / "cur", out / "new", out / "tmp"):
        directory.mkdir(parents=True, exist_ok=True)
    deliver_as = None
    if os.geteuid() == 0:  # getmail: "refuse to deliver mail as root"
        deliver_as = "nobody"
        nobody = pwd.getpwnam(deliver_as)
        for directory in (out, out / "cur", out / "new", out / "tmp"):
            os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    rc = gdir / "getmailrc"
    rc.write_text(
        getmail_rc(account, maildir=out, delete=delete, read_all=read_all, deliver_as=deliver_as)
    )
    rc.chmod(0o600)
    before = {p.name for p in (out / "new").iterdir()}
    argv = [program("getmail"), "--getmaildir", str(gdir), "--rcfile", str(rc)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "LC_ALL": "C.UTF-8",
    }
    result = subprocess.run(
        argv, capture_output=True, env=env, timeout=timeout, check=False, cwd=work
    )
    files = [p for p in (out / "new").iterdir() if p.name not in before]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    return FetchRun(
        argv=argv,
        returncode=result.returncode,
        output=(result.stdout + result.stderr).decode(errors="replace"),
        messages=[to_crlf(p.read_bytes()) for p in files],
        files=files,
    )
