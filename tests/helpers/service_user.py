"""A real unprivileged account for tests that start mailhouse as root, and a Python it can run.

Started as root with `user = "mailhouse-test"`, mailhouse drops to that account and from then on
imports modules and starts child processes as it. The interpreter running the tests may live
where that account cannot go (pyenv installs under /root, mode 0700), and mailhouse rightly
refuses to start then. So `shared_python()` provides an interpreter the account can run:
the test interpreter itself when the account can use it, else a tree of hard links to it (the
executable, libpython, the standard library and the runtime dependencies' files) in a
world-readable directory under /tmp. Hard links cost no copy and change nothing in the
original tree; a copy is the fallback when /tmp is another file system. The mailhouse package
under test is copied beside it, so where the checkout lives does not matter either.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata as metadata
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "mailhouse-test"
REPO = Path(__file__).resolve().parents[2]
# Standard-library directories no server process imports: not linked.
SKIPPED_STDLIB = frozenset({"site-packages", "test", "idlelib", "tkinter", "turtledemo",
                            "ensurepip", "lib2to3"})


@dataclass(frozen=True)
class SharedPython:
    """An interpreter `SERVICE_USER` can run, and the environment its processes need."""

    python: str
    env: dict[str, str]


def ensure_service_user(name: str = SERVICE_USER) -> pwd.struct_passwd:
    """The account, created (system account, no home, no login shell) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    return pwd.getpwnam(name)


def can_run(python: str, env: dict[str, str], account: pwd.struct_passwd) -> bool:
    """Can `account` start `python` and import the server (what a dropped `serve` needs)?"""
    try:
        result = subprocess.run(
            [python, "-c", "import mailhouse.app, mailhouse.__main__"],
            user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd="/",
            env={**os.environ, **env}, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def shared_python(dest: Path, account: pwd.struct_passwd) -> SharedPython | None:
    """An interpreter `account` can run, built under `dest` (world-readable) when needed.
    None when neither works (the caller skips)."""
    dest.mkdir(parents=True, exist_ok=True)
    packages = dest / "packages"
    shutil.copytree(_package_under_test(), packages / "mailhouse",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(packages)}
    _open_directories(dest)
    if can_run(sys.executable, env, account):
        return SharedPython(sys.executable, env)
    python = _link_interpreter(dest / "python")
    env["LD_LIBRARY_PATH"] = str(dest / "python" / "lib")  # libpython: RUNPATH is absolute
    _open_directories(dest)
    if can_run(python, env, account):
        return SharedPython(python, env)
    return None


def _package_under_test() -> Path:
    """The mailhouse package this test run imports (the checkout's, via PYTHONPATH)."""
    spec = importlib.util.find_spec("mailhouse")
    if spec is None or spec.origin is None:
        raise RuntimeError("mailhouse is not importable")
    return Path(spec.origin).parent


def _link_interpreter(dest: Path) -> str:
    executable = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = stdlib.name  # "python3.11"
    _link(executable, dest / "bin" / executable.name)
    for lib in (prefix / "lib").glob("libpython*.so*"):
        _link(lib, dest / "lib" / lib.name)
    for root, dirs, files in os.walk(stdlib):
        relative = Path(root).relative_to(stdlib)
        if relative == Path():
            dirs[:] = [d for d in dirs if d not in SKIPPED_STDLIB]
        for name in files:
            _link(Path(root) / name, dest / "lib" / version / relative / name)
    site = dest / "lib" / version / "site-packages"
    for dist in runtime_distributions():
        for file in dist.files or []:
            if file.parts and file.parts[0] == "..":
                continue  # console scripts outside site-packages
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                _link(source, site / file)
    return str(dest / "bin" / executable.name)


def runtime_distributions() -> list[metadata.Distribution]:
    """mailhouse's runtime dependencies (pyproject.toml) and theirs, extras and markers
    honoured."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(text), "") for text in project["dependencies"]]
    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(requirement.name)
        known = found.get(key)
        if known is not None and set(requirement.extras) <= known[1]:
            continue
        dist = known[0] if known is not None else metadata.distribution(requirement.name)
        extras = set(requirement.extras) | (known[1] if known is not None else set())
        found[key] = (dist, extras)
        for text in dist.requires or []:
            for wanted in ("", *sorted(extras)):
                todo.append((Requirement(text), wanted))
    return [dist for dist, _ in found.values()]


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM):
            raise
        shutil.copy2(source, target)


def _open_directories(top: Path) -> None:
    """Every directory under `top` 0755 (the umask may have made them 0700); files keep the
    modes of the originals they are links to."""
    for root, dirs, _ in os.walk(top):
        os.chmod(root, 0o755)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def uid_of(pid: int) -> int:
    """The real uid of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise LookupError(pid)
