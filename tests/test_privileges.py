"""The privilege model (privileges.py, docs/decisions.md "The privilege model"), as the real
thing: `mailhouse serve` and the CLI started as root with `user = "mailhouse-test"`, a real
system account (created here when missing), against a data directory that account controls.

What the account plants in its own data directory (symbolic links, hard links, a temporary name
the server used to write through) must never make root touch anything outside it; everything
mailhouse creates is the account's and private; the store is opened by the account, never by
root; an interpreter the account cannot run stops start-up with the path and the fix.

The root tests need the service account to run the interpreter: tests/helpers/service_user.py
links one it can reach when pyenv keeps ours under /root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailhouse.net.tls import ensure_self_signed
from mailhouse.store import open_store
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import LOOPBACK, wait_until
from tests.helpers.service_user import (
    SERVICE_USER,
    SharedPython,
    children_of,
    ensure_service_user,
    shared_python,
    uid_of,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="starts mailhouse as root")
SECRET = b"root's secret\n"
SERVE_TIMEOUT = 60


@dataclass(frozen=True)
class Victim:
    """A root-owned file or directory outside data_dir, and how it looked before."""

    path: Path
    before: tuple[int, int, int, bytes]

    @staticmethod
    def state(path: Path) -> tuple[int, int, int, bytes]:
        st = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content

    def unchanged(self) -> bool:
        return self.state(self.path) == self.before


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("starts mailhouse as root")
    return ensure_service_user()


@pytest.fixture(scope="session")
def python(account: pwd.struct_passwd) -> Iterator[SharedPython]:
    where = Path(tempfile.mkdtemp(prefix="mailhouse-test-python-", dir="/tmp"))
    try:
        shared = shared_python(where, account)
        if shared is None:
            pytest.skip(f"no Python {SERVICE_USER} can run")
        yield shared
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the service account can traverse (pytest's tmp_path has 0700 parents)."""
    path = Path(tempfile.mkdtemp(prefix="mailhouse-priv-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victims(base: Path) -> Callable[[str, bytes | None], Victim]:
    """Make root-owned things in a directory only root can enter."""
    closed = base / "root-only"
    closed.mkdir(mode=0o700)

    def make(name: str, content: bytes | None = SECRET) -> Victim:
        path = closed / name
        if content is None:
            path.mkdir(mode=0o700)
        else:
            path.write_bytes(content)
            os.chmod(path, 0o600)
        return Victim(path, Victim.state(path))

    return make


Server = Callable[..., MailhouseServer]


@pytest.fixture
def server(base: Path, python: SharedPython) -> Iterator[Server]:
    made: list[MailhouseServer] = []

    def make(protocols: tuple[str, ...] = ("smtp",), extra_toml: str = "",
             python_path: str | None = None) -> MailhouseServer:
        instance = MailhouseServer(base / "mh", protocols=protocols, user=SERVICE_USER,
                                   python=python_path or python.python, env=python.env,
                                   extra_toml=extra_toml)
        os.chmod(instance.base, 0o755)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()


def start(server: MailhouseServer) -> None:
    """Start and wait for the banner: the ports accept as soon as root has bound them."""
    server.start(timeout=SERVE_TIMEOUT)
    assert wait_until(lambda: "mailhouse is running" in server.log_tail(), timeout=30,
                      interval=0.05), server.log_tail()


def serve_once(server: MailhouseServer) -> subprocess.CompletedProcess[str]:
    """`serve` expected to stop by itself during start-up."""
    return subprocess.run(
        [server.python, "-m", "mailhouse", "--config", str(server.config_path), "serve"],
        env=server.env, capture_output=True, text=True, timeout=SERVE_TIMEOUT, check=False)


def plant_symlink(link: Path, target: Path, account: pwd.struct_passwd) -> None:
    """What the service account could do in its own directory."""
    link.symlink_to(target)
    os.lchown(link, account.pw_uid, account.pw_gid)


def everything_under(top: Path) -> list[Path]:
    out = [top]
    for root, dirs, files in os.walk(top):
        out += [Path(root) / name for name in dirs + files]
    return out


def deliver(server: MailhouseServer, rcpt: str) -> None:
    with smtplib.SMTP(LOOPBACK, server.port("smtp"), timeout=30) as client:
        client.sendmail("sender@remote.test", [rcpt], b"Subject: hi\r\n\r\nhello\r\n")


# --- (a) links planted in data_dir ------------------------------------------------------------

@ROOT_ONLY
def test_links_planted_in_data_dir_are_never_followed_by_root(
        server: Server, victims: Callable[[str, bytes | None], Victim],
        account: pwd.struct_passwd) -> None:
    mh = server()
    start(mh)
    mh.stop()
    file, directory = victims("shadow", SECRET), victims("dir", None)
    data = mh.data_dir
    plant_symlink(data / "evil", file.path, account)
    plant_symlink(data / "evil-dir", directory.path, account)
    plant_symlink(data / "blobs" / "evil", file.path, account)
    plant_symlink(data / "locks", directory.path, account)

    mh.add_domain("example.test")
    mh.add_user("alice@example.test", "pw")
    start(mh)
    deliver(mh, "alice@example.test")
    assert mh.stop() == 0, mh.log_tail()
    assert file.unchanged() and directory.unchanged()
    assert os.listdir(directory.path) == []


# --- (b) the README's order leaves nothing readable by others ---------------------------------

@ROOT_ONLY
def test_readme_order_makes_everything_private_and_the_accounts(
        server: Server, account: pwd.struct_passwd) -> None:
    # `domain add` and `user add` as root BEFORE the first `serve`: data_dir does not exist.
    mh = server(protocols=("smtp", "pop3"), extra_toml="[pop3]\nworkers = 2\n")
    mh.add_domain("example.test")
    mh.add_user("alice@example.test", "pw")
    start(mh)
    main = mh.process.pid if mh.process is not None else 0
    assert uid_of(main) == account.pw_uid
    children = children_of(main)
    assert len(children) == 3  # the queue process and two POP3 workers
    assert {uid_of(child) for child in children} == {account.pw_uid}
    deliver(mh, "alice@example.test")
    assert mh.stop() == 0, mh.log_tail()

    exposed = [f"{path} {stat.filemode(st.st_mode)} uid={st.st_uid}"
               for path in everything_under(mh.data_dir)
               if (st := os.lstat(path)).st_uid != account.pw_uid
               or stat.S_IMODE(st.st_mode) & 0o077]
    assert exposed == []
    assert (mh.data_dir / "mailhouse.db").exists() and (mh.data_dir / "dkim").is_dir()


# --- (c) the self-signed key ------------------------------------------------------------------

@ROOT_ONLY
def test_self_signed_key_is_never_written_through_a_planted_name(
        server: Server, victims: Callable[[str, bytes | None], Victim],
        account: pwd.struct_passwd) -> None:
    mh = server()
    start(mh)
    mh.stop()
    tls = mh.data_dir / "tls"
    for made in tls.glob("selfsigned-*.pem"):
        made.unlink()  # the account may delete its files: the pair is made again
    key, cert = victims("key", SECRET), victims("cert", SECRET)
    plant_symlink(tls / "selfsigned-key.tmp", key.path, account)
    plant_symlink(tls / "selfsigned-cert.tmp", cert.path, account)
    start(mh)
    assert mh.stop() == 0, mh.log_tail()
    assert key.unchanged() and cert.unchanged()
    made_key = os.lstat(tls / "selfsigned-key.pem")
    assert stat.S_ISREG(made_key.st_mode) and made_key.st_uid == account.pw_uid
    assert stat.S_IMODE(made_key.st_mode) == 0o600


def test_ensure_self_signed_writes_through_no_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    directory = tmp_path / "tls"
    directory.mkdir()
    (directory / "selfsigned-key.tmp").symlink_to(victim)
    (directory / "selfsigned-cert.tmp").symlink_to(victim)
    _, key = ensure_self_signed(directory, "mx.example.test")
    assert victim.read_bytes() == SECRET
    assert not key.is_symlink() and b"PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [
        "selfsigned-cert.pem", "selfsigned-cert.tmp", "selfsigned-key.pem", "selfsigned-key.tmp"]


# --- (d) the store is opened by the service account -------------------------------------------

@ROOT_ONLY
def test_the_store_is_opened_by_the_service_account_after_binding(
        server: Server, account: pwd.struct_passwd) -> None:
    mh = server(protocols=("smtp", "submission"))
    with socket.create_server((LOOPBACK, mh.port("submission"))):
        # Port taken (another MTA): start-up fails, after root bound what it could.
        result = serve_once(mh)
    assert result.returncode == 2, result.stderr
    assert "cannot listen" in result.stderr
    # Nothing of the store yet: it is opened only after the sockets, and never by root.
    assert [p.name for p in mh.data_dir.iterdir()] == []
    assert os.lstat(mh.data_dir).st_uid == account.pw_uid

    start(mh)
    try:
        owners = {p.name: os.lstat(p).st_uid for p in mh.data_dir.iterdir()}
        assert {"mailhouse.db", "mailhouse.db-wal", "store.lock"} <= set(owners)
        assert set(owners.values()) == {account.pw_uid}
    finally:
        assert mh.stop() == 0, mh.log_tail()


# --- an interpreter the service account cannot run --------------------------------------------

@ROOT_ONLY
def test_an_interpreter_the_account_cannot_run_stops_start_up_with_its_path(
        server: Server, base: Path, python: SharedPython) -> None:
    closed = base / "closed"
    closed.mkdir(mode=0o700)  # root's: the account cannot reach what is inside
    hidden = closed / "python3"
    hidden.symlink_to(os.path.realpath(python.python))
    mh = server(python_path=str(hidden))
    result = serve_once(mh)
    assert result.returncode == 2, result.stderr
    assert f"{SERVICE_USER} cannot run {hidden}" in result.stderr
    assert "Traceback" not in result.stderr and "venv" in result.stderr

    cli = mh.cli("domain", "add", "example.test", check=False)
    assert cli.returncode == 2
    assert f"cannot run {hidden}".encode() in cli.stderr


# --- another owner: refused at start, repaired only on request --------------------------------

@ROOT_ONLY
def test_a_data_dir_of_another_owner_is_refused_and_left_as_it_is(
        server: Server, account: pwd.struct_passwd) -> None:
    mh = server()
    mh.data_dir.mkdir(mode=0o755)
    os.chmod(mh.data_dir, 0o755)
    inside = mh.data_dir / "mailhouse.db"
    inside.write_bytes(b"")
    os.chmod(inside, 0o644)
    before = [Victim.state(p) for p in (mh.data_dir, inside)]
    result = serve_once(mh)
    assert result.returncode == 2
    assert "belongs to root, not to mailhouse-test" in result.stderr
    assert "mailhouse fix-permissions" in result.stderr
    cli = mh.cli("user", "list", check=False)
    assert cli.returncode == 2 and b"mailhouse fix-permissions" in cli.stderr
    assert [Victim.state(p) for p in (mh.data_dir, inside)] == before


@ROOT_ONLY
def test_a_data_dir_the_account_cannot_reach_is_named(server: Server, base: Path) -> None:
    mh = server()
    closed = base / "closed"
    closed.mkdir(mode=0o700)  # like pytest's tmp_path: root's, 0700
    mh.data_dir = closed / "data"
    mh.write_config()
    result = serve_once(mh)
    assert result.returncode == 2, result.stderr
    assert f"{SERVICE_USER} cannot enter {mh.data_dir}" in result.stderr


@ROOT_ONLY
def test_commands_as_root_need_the_configured_account(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import mailhouse.__main__ as cli

    config = tmp_path / "mailhouse.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nuser = "no-such-user-here"\n')
    assert cli.main(["--config", str(config), "domain", "list"]) == 2
    assert "no system user 'no-such-user-here'; create it (useradd" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@ROOT_ONLY
def test_fix_permissions_hands_data_dir_over_following_no_link(
        server: Server, victims: Callable[[str, bytes | None], Victim],
        account: pwd.struct_passwd) -> None:
    mh = server()
    data = mh.data_dir
    (data / "blobs" / "20260101").mkdir(parents=True)
    (data / "blobs" / "20260101" / ("0" * 32)).write_bytes(b"mail")
    (data / "mailhouse.db").write_bytes(b"")
    for path in everything_under(data):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    file, directory, linked = (victims("shadow", SECRET), victims("dir", None),
                               victims("linked", SECRET))
    (data / "evil").symlink_to(file.path)
    (data / "blobs" / "evil-dir").symlink_to(directory.path)
    os.link(linked.path, data / "hardlink")
    linked = Victim(linked.path, Victim.state(linked.path))

    result = mh.cli("fix-permissions", check=False)
    assert result.returncode == 1, result.stderr  # something was left alone: look at it
    err = result.stderr.decode()
    for left in ("evil: a symbolic link", "evil-dir: a symbolic link", "hardlink: has 2 names"):
        assert left in err
    assert file.unchanged() and directory.unchanged() and linked.unchanged()
    for path in everything_under(data):
        st = os.lstat(path)
        if path.name in ("evil", "evil-dir", "hardlink"):
            assert st.st_uid == 0
            continue
        assert st.st_uid == account.pw_uid, path
        assert stat.S_IMODE(st.st_mode) == (0o700 if stat.S_ISDIR(st.st_mode) else 0o600), path


# --- without root: what the umask and explicit modes give -------------------------------------

def test_the_cli_creates_nothing_others_can_read(tmp_path: Path) -> None:
    config = tmp_path / "mailhouse.toml"
    config.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                      'user = "root"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mailhouse", "--config", str(config), "domain", "add",
         "example.test"],
        capture_output=True, timeout=SERVE_TIMEOUT, check=False, umask=0o022)
    assert result.returncode == 0, result.stderr
    exposed = [p for p in everything_under(tmp_path / "data")
               if stat.S_IMODE(os.lstat(p).st_mode) & 0o077]
    assert exposed == []


def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    import asyncio

    async def open_and_write() -> None:
        store = open_store(tmp_path / "data")
        await store.open()
        try:
            await store.add_domain("example.test")
            names = {p.name for p in (tmp_path / "data").iterdir()}
            assert {"mailhouse.db", "mailhouse.db-wal", "mailhouse.db-shm"} <= names
            exposed = [p for p in everything_under(tmp_path / "data")
                       if stat.S_IMODE(os.lstat(p).st_mode) & 0o077]
            assert exposed == []
        finally:
            await store.close()

    previous = os.umask(0o022)
    try:
        asyncio.run(open_and_write())
    finally:
        os.umask(previous)


def test_wakeup_sockets_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The wake-up sockets (store/wakeup.py) and their directories, made by a store that
    publishes, give group and others nothing even under a permissive umask."""
    import asyncio

    from mailhouse.store.base import DeliveryTarget
    from mailhouse.store.wakeup import WAKEUP_DIR, SocketWakeups
    from tests.store.conftest import deliver_bytes

    async def open_and_deliver() -> None:
        data = tmp_path / "data"
        wakeups = SocketWakeups(data)
        store = open_store(data, wakeups=wakeups)
        await store.open()
        await wakeups.start()
        try:
            account = await store.add_account("alice@example.test", "h")
            await deliver_bytes(store, b"Subject: hi\r\n\r\nhello\r\n",
                                [DeliveryTarget(account.id)])
            assert list((data / WAKEUP_DIR).iterdir())
            exposed = [p for p in everything_under(data)
                       if stat.S_IMODE(os.lstat(p).st_mode) & 0o077]
            assert exposed == []
        finally:
            await wakeups.close()
            await store.close()

    previous = os.umask(0o002)
    try:
        asyncio.run(open_and_deliver())
    finally:
        os.umask(previous)
