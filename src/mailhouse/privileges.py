"""Who mailhouse runs as, and how root hands data_dir to the service account.

The model (docs/decisions.md, "The privilege model"), for `serve` and every CLI command:

- Every process sets umask 077 first (`__main__`), and everything mailhouse creates under
  data_dir is made 0700 (directories) or 0600 (files) on top of that.
- Started as root with `user` naming another account, root does only what needs root: it
  creates a missing data_dir (0700, handed to the account through the descriptor it just
  made) or checks with lstat that an existing one is a real directory owned by the account,
  then reads the configured certificate and key and binds the listening sockets (serve).
  Then it drops privileges for good (`become`) BEFORE anything opens, creates or reads a file
  inside data_dir. Whatever the service account planted there (symbolic links, hard links),
  root never follows it: after the drop a link can only reach what the account could reach
  by itself.
- Root never changes ownership below data_dir at start. `mailhouse fix-permissions` is the
  explicit repair (`fix_permissions`): a walk by descriptors that never follows a link.
- After the drop the process still imports modules and starts child processes with the same
  interpreter, so the service account must be able to run and read it (`interpreter_problem`).
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mailhouse.config import Config
from mailhouse.errors import ConfigError

DATA_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PARENT_MODE = 0o755  # directories root makes above data_dir: the account must traverse them
UMASK = 0o077
MAX_REPAIR_DEPTH = 16  # mailhouse nests 3 deep (blobs/DAY/FILE); deeper is not ours
FIX_COMMAND = "mailhouse fix-permissions"


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged account a root process becomes."""

    name: str
    uid: int
    gid: int


def service_account(config: Config) -> Account | None:
    """The account to become: only when running as root and `user` names another account.
    None when not root, or with `user = "root"` (tests) or no `user` (try-it-now)."""
    if os.geteuid() != 0 or not config.user or config.user == "root":
        return None
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(f"user: no system user {config.user!r}; create it (useradd --system "
                          f"--home-dir {config.data_dir} {config.user}) or set `user` to an "
                          "existing one") from None
    if entry.pw_uid == 0:
        return None
    return Account(config.user, entry.pw_uid, entry.pw_gid)


def owner_of(data_dir: Path) -> Account | None:
    """The account owning an existing data_dir when it is not root's (lstat: never follows a
    link), for a config without `user` (the try-it-now defaults run by root)."""
    try:
        st = os.lstat(data_dir)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid == 0:
        return None
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        name = str(st.st_uid)
    return Account(name, st.st_uid, st.st_gid)


def prepare_data_dir(data_dir: Path, account: Account) -> None:
    """As root: make sure data_dir is a directory of `account`, touching nothing inside it.

    Missing: created 0700 (missing parents 0755, root's) and handed over with fchown on the
    descriptor of the directory just made. Present: inspected with lstat only; a symbolic link,
    a non-directory or another owner stops start-up with the command that fixes it."""
    try:
        st = os.lstat(data_dir)
    except FileNotFoundError:
        _create_data_dir(data_dir, account)
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"data_dir: {data_dir} is a symbolic link (to {os.readlink(data_dir)});"
                          " set data_dir to the directory itself")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"data_dir: {data_dir} is not a directory")
    if st.st_uid != account.uid:
        raise ConfigError(f"data_dir: {data_dir} belongs to {_user_name(st.st_uid)}, not to "
                          f"{account.name}; hand it over once with `{FIX_COMMAND}` (as root: "
                          "it changes owner and modes without following links)")


def _create_data_dir(data_dir: Path, account: Account) -> None:
    missing = [p for p in reversed(data_dir.parents) if not os.path.lexists(p)]
    for parent in missing:
        try:
            os.mkdir(parent, PARENT_MODE)
        except FileExistsError:
            continue
        os.chmod(parent, PARENT_MODE)  # whatever the umask
    try:
        os.mkdir(data_dir, DATA_DIR_MODE)
    except FileExistsError:  # made meanwhile: inspect it like any existing one
        prepare_data_dir(data_dir, account)
        return
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or os.listdir(fd):
            raise ConfigError(f"data_dir: {data_dir} changed while it was being created; "
                              "try again")
        os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, DATA_DIR_MODE)
    finally:
        os.close(fd)


def become(account: Account) -> None:
    """Drop root for good: no supplementary groups, then the account's group, then its uid.
    Checks that root cannot be regained (a setuid that only changed the effective uid)."""
    os.setgroups([])
    os.setgid(account.gid)
    os.setuid(account.uid)
    if os.getuid() != account.uid or os.geteuid() != account.uid or os.getegid() != account.gid:
        raise ConfigError(f"user: could not become {account.name}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise ConfigError(f"user: still able to become root after switching to {account.name}")


def check_data_dir_access(data_dir: Path, account: Account) -> None:
    """After the drop: every parent of data_dir must let the account through."""
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir: {account.name} cannot enter {data_dir}; every directory "
                          f"above it must be searchable by {account.name} (chmod o+x)")


def tighten_data_dir(data_dir: Path) -> None:
    """As data_dir's owner (never root): the directory itself 0700. Older releases made it
    0750; with the top closed, nothing below is reachable by other users."""
    try:
        st = os.stat(data_dir)
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != DATA_DIR_MODE:
        os.chmod(data_dir, DATA_DIR_MODE)


# --- the interpreter ------------------------------------------------------------------------

def import_roots() -> list[str]:
    """The sys.path entries this process has imported modules from (stdlib, lib-dynload,
    site-packages, mailhouse's own directory): later imports and child processes read them."""
    entries = sorted({os.path.abspath(p) for p in sys.path}, key=len, reverse=True)
    roots: set[str] = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        path = os.path.abspath(path)
        for entry in entries:
            if path.startswith(entry + os.sep):
                roots.add(entry)
                break
    return sorted(roots)


def interpreter_problem(python: str = sys.executable) -> str | None:
    """What this process, as the account it runs as now, cannot do of what every mailhouse
    process needs: run `python`, read the directories its modules come from. None: fine."""
    if not os.access(python, os.X_OK):
        return f"cannot run {python}"
    for root in import_roots():
        if not os.access(root, os.R_OK | os.X_OK):
            return f"cannot read {root}"
    return None


def interpreter_error(account_name: str, problem: str) -> ConfigError:
    return ConfigError(
        f"user: {account_name} {problem} (it, or a directory above it, is closed to "
        f"{account_name}). mailhouse runs as that user after start-up: it keeps importing "
        "modules and starts `python -m mailhouse.…` child processes. Install mailhouse with a "
        "Python every user can read (e.g. a venv made by `/usr/bin/python3 -m venv "
        f"/opt/mailhouse`), or start it as {account_name} directly (docs/operations.md, systemd)")


def check_interpreter(account: Account) -> None:
    """After the drop: fail now, with the path, rather than at the first lazy import or at
    the first child process."""
    problem = interpreter_problem()
    if problem is not None:
        raise interpreter_error(account.name, problem)


# --- the explicit repair ----------------------------------------------------------------------

@dataclass(slots=True)
class RepairReport:
    """What `fix_permissions` changed and what it left alone (and why)."""

    changed: int = 0
    seen: int = 0
    skipped: list[str] = field(default_factory=list)


def fix_permissions(data_dir: Path, account: Account) -> RepairReport:
    """As root: hand every directory and regular file under data_dir to `account`, modes 0700
    and owner-only, walking by descriptor (openat with O_NOFOLLOW), so a link planted inside
    is never followed. Symbolic links, hard-linked files (a second name may be a file outside
    data_dir), devices, FIFOs and sockets are reported and left alone."""
    report = RepairReport()
    try:
        st = os.lstat(data_dir)
    except FileNotFoundError:
        _create_data_dir(data_dir, account)
        report.changed += 1
        report.seen += 1
        return report
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"data_dir: {data_dir} is not a directory (a symbolic link?); set "
                          "data_dir to the directory itself")
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not os.path.samestat(st, os.fstat(fd)):
            raise ConfigError(f"data_dir: {data_dir} changed while it was being opened")
        _repair_dir(fd, str(data_dir), account, report, depth=0)
    finally:
        os.close(fd)
    return report


def _repair_dir(dir_fd: int, path: str, account: Account, report: RepairReport,
                depth: int) -> None:
    _repair_fd(dir_fd, account, DATA_DIR_MODE, report)
    with os.scandir(dir_fd) as it:
        names = [entry.name for entry in it]
    for name in names:
        where = os.path.join(path, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if depth + 1 >= MAX_REPAIR_DEPTH:
                report.skipped.append(f"{where}: nested deeper than {MAX_REPAIR_DEPTH}")
                continue
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            child = _open_same(name, dir_fd, flags, st, where, report)
            if child is not None:
                try:
                    _repair_dir(child, where, account, report, depth + 1)
                finally:
                    os.close(child)
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                report.skipped.append(f"{where}: has {st.st_nlink} names (hard links)")
                continue
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            child = _open_same(name, dir_fd, flags, st, where, report)
            if child is not None:
                try:
                    _repair_fd(child, account, stat.S_IMODE(st.st_mode) & 0o700, report)
                finally:
                    os.close(child)
        else:
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a file or directory"
            report.skipped.append(f"{where}: {kind}")


def _open_same(name: str, dir_fd: int, flags: int, expected: os.stat_result, where: str,
               report: RepairReport) -> int | None:
    """Open `name` below `dir_fd` without following a link; None (reported) when it was
    swapped for something else since lstat."""
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        report.skipped.append(f"{where}: {exc.strerror}")
        return None
    if not os.path.samestat(expected, os.fstat(fd)):
        os.close(fd)
        report.skipped.append(f"{where}: changed while being repaired")
        return None
    return fd


def _repair_fd(fd: int, account: Account, mode: int, report: RepairReport) -> None:
    st = os.fstat(fd)
    report.seen += 1
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (account.uid, account.gid, mode):
        return
    os.fchown(fd, account.uid, account.gid)
    os.fchmod(fd, mode)
    report.changed += 1


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
