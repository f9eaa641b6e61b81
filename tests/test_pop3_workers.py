"""`[pop3] workers = N` > 1: `mailhouse serve` binds the POP3 sockets and N supervised children
serve them (pop3_process.py). The maildrop lock (RFC 1939 §8, [IN-USE]) holds across
processes (Store.lock_maildrop: the SQLite store flocks a file per account) and dies with its
holder."""

from __future__ import annotations

import asyncio
import base64
import os
import poplib
import signal
import smtplib
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailhouse.proto.pop3.events import LoginResult
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.pop3 import Pop3Service
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store import open_store
from tests.helpers.fixtures import start_mailhouse
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import wait_until

ALICE = "alice@example.test"
PASSWORD = "correct horse battery"


# --- the lock across processes ---------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    from argon2 import PasswordHasher
    from mailhouse.service.accounts import Accounts, Passwords
    from mailhouse.service.pop3 import Pop3Service
    from mailhouse.service.throttle import LoginGuard, LoginThrottle
    from mailhouse.store import open_store

    async def main():
        data = Path(sys.argv[1])
        store = open_store(data)
        await store.open()
        hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        guard = LoginGuard(Accounts(store, Passwords(hasher)), LoginThrottle(5, 60.0), delay=0.0)
        service = Pop3Service(store, guard)
        result, maildrop = await service.login("192.0.2.1", sys.argv[2], sys.argv[3])
        print(result.name, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_the_maildrop_lock_holds_across_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cheap = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))

    async def setup() -> int:
        store = open_store(data)
        await store.open()
        try:
            accounts = Accounts(store, cheap)
            await accounts.add_domain("example.test")
            return (await accounts.add_user(ALICE, PASSWORD)).id
        finally:
            await store.close()

    async def login() -> LoginResult:
        store = open_store(data)
        await store.open()
        try:
            guard = LoginGuard(Accounts(store, cheap), LoginThrottle(5, 60.0), delay=0.0)
            service = Pop3Service(store, guard)
            result, maildrop = await service.login("192.0.2.2", ALICE, PASSWORD)
            if maildrop is not None:
                maildrop.release()
            return result
        finally:
            await store.close()

    account_id = asyncio.run(setup())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data), ALICE, PASSWORD],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "OK"
        # Named from the account id, nothing the client sent.
        assert (data / "locks" / "pop3" / str(account_id)).exists()
        assert asyncio.run(login()) is LoginResult.IN_USE
        holder.send_signal(signal.SIGKILL)  # no release(): the kernel drops the flock
        holder.wait(10)
        assert asyncio.run(login()) is LoginResult.OK
        assert asyncio.run(login()) is LoginResult.OK  # released again after each session
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


# --- a server with two POP3 workers ------------------------------------------------------------

def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return b"mailhouse.pop3_process" in cmdline and state != "Z"


def workers(server: MailhouseServer, count: int = 2, ready: int = 2) -> list[int]:
    """The live worker pids, once `count` are alive and `ready` have said so in the log."""
    assert server.process is not None
    found: list[int] = []

    def up() -> bool:
        assert server.process is not None
        found[:] = sorted(c for c in children(server.process.pid) if is_worker(c))
        log = server.log_path.read_text()
        return len(found) == count and log.count("event=pop3.process_ready") >= ready

    assert wait_until(up, timeout=20, interval=0.05), server.log_tail()
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailhouseServer]:
    instance = start_mailhouse(
        tmp_path / "mh", users={ALICE: PASSWORD}, domains=("example.test",),
        protocols=("smtp", "pop3", "pop3s"),
        extra_toml="[pop3]\nallow_plaintext_auth = true\nworkers = 2\n")
    try:
        yield instance
    finally:
        instance.close()


def session(server: MailhouseServer) -> tuple[int, int]:
    client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
    try:
        client.user(ALICE)
        client.pass_(PASSWORD)
        return client.stat()
    finally:
        client.quit()


def served_by(server: MailhouseServer) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in server.log_path.read_text().splitlines():
        if "event=pop3.login " in line and "result=OK" in line:
            role = line.split("role=", 1)[1].split()[0]
            out[role] = out.get(role, 0) + 1
    return out


def test_each_worker_serves_and_the_lock_spans_them(server: MailhouseServer) -> None:
    first, second = workers(server)
    for _ in range(20):
        assert session(server) == (0, 0)
    # Each child serves: with one stopped, the other takes every connection.
    for stopped in (first, second):
        os.kill(stopped, signal.SIGSTOP)
        try:
            for _ in range(3):
                assert session(server) == (0, 0)
        finally:
            os.kill(stopped, signal.SIGCONT)
    roles = served_by(server)
    assert set(roles) == {"pop3-1", "pop3-2"}, roles
    assert sum(roles.values()) == 26
    # Two sessions for one maildrop: the second is refused whichever child it reached.
    holder = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
    holder.user(ALICE)
    holder.pass_(PASSWORD)
    for _ in range(4):
        other = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
        other.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"IN-USE"):
            other.pass_(PASSWORD)
        other.quit()
    holder.quit()
    assert session(server) == (0, 0)


def test_a_killed_worker_comes_back_and_shutdown_is_clean(server: MailhouseServer) -> None:
    first, second = workers(server)
    os.kill(first, signal.SIGKILL)
    now = workers(server, ready=3)
    assert first not in now
    assert second in now and len(now) == 2
    assert "event=pop3.process_exited worker=1" in server.log_tail(200)
    for _ in range(10):
        assert session(server) == (0, 0)
    assert server.stop() == 0
    assert not any(is_worker(pid) for pid in now)
    log = server.log_path.read_text()
    assert log.count("event=pop3.process_exit ") >= 2
    assert "Traceback" not in log


def test_workers_die_with_a_killed_parent(server: MailhouseServer) -> None:
    pids = workers(server)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    assert wait_until(lambda: not any(is_worker(p) for p in pids), timeout=10, interval=0.05)


# --- one login throttle for every worker (issue 7, finding 4) ---------------------------------

LIMIT = 3  # auth_failure_limit for the throttle tests


def pass_in_parallel(server: MailhouseServer, passwords: list[str],
                     late: str | None = None) -> tuple[list[str], str]:
    """USER alice on one connection per password, then every PASS at once; `late` is sent on
    another connection just after them, while they are being checked. Returns the replies."""
    count = len(passwords) + (late is not None)
    barrier = threading.Barrier(count)

    def attempt(password: str, delay: float) -> str:
        client = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=15)
        try:
            client.user(ALICE)
            barrier.wait(timeout=15)
            time.sleep(delay)
            try:
                return client.pass_(password).decode()
            except poplib.error_proto as exc:
                return str(exc)
        finally:
            client.close()

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(attempt, p, 0.0) for p in passwords]
        last = pool.submit(attempt, late, 0.05) if late is not None else None
        replies = [f.result() for f in futures]
        return replies, (last.result() if last is not None else "")


def auth_in_parallel(server: MailhouseServer, count: int, password: str) -> list[int]:
    """`count` submission sessions: STARTTLS, then every AUTH PLAIN at once. The reply codes."""
    barrier = threading.Barrier(count)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    token = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()

    def attempt() -> int:
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=15) as client:
            client.starttls(context=context)
            client.ehlo()
            barrier.wait(timeout=15)
            return client.docmd("AUTH", "PLAIN " + token)[0]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: attempt(), range(count)))


@pytest.fixture
def throttled_server(tmp_path: Path) -> Iterator[MailhouseServer]:
    instance = start_mailhouse(
        tmp_path / "mh", users={ALICE: PASSWORD}, domains=("example.test",),
        protocols=("submission", "pop3"),
        extra_toml=(f"[pop3]\nallow_plaintext_auth = true\nworkers = 4\n\n"
                    f"[submission]\nauth_failure_limit = {LIMIT}\nauth_failure_delay = 0.2\n"))
    try:
        yield instance
    finally:
        instance.close()


def test_guesses_spread_over_workers_get_one_allowance(throttled_server: MailhouseServer) -> None:
    # Before: each worker had its own throttle, and checks in flight did not count until a
    # failure landed, so every one of these guesses was checked and the right password got in.
    server = throttled_server
    workers(server, count=4, ready=4)
    # A client opening many connections at once with the right password is never throttled,
    # whatever the limit: on POP3 one gets the maildrop, the others [IN-USE] (the password was
    # checked and right); on submission every AUTH succeeds.
    replies, _ = pass_in_parallel(server, [PASSWORD] * 12)
    assert not [r for r in replies if "[AUTH]" in r], replies
    assert any(r.startswith("+OK") for r in replies), replies
    assert auth_in_parallel(server, 20, PASSWORD) == [235] * 20
    # Now 16 parallel guesses from the same address, spread over the four workers, and the
    # right password while they are being checked, then once more after them.
    replies, late = pass_in_parallel(server, [f"guess {i}" for i in range(16)], late=PASSWORD)
    assert all("[AUTH]" in r for r in replies), replies
    assert "[AUTH]" in late
    again, _ = pass_in_parallel(server, [PASSWORD])
    assert "[AUTH]" in again[0]
    # One count for every process and protocol: submission is locked too.
    assert auth_in_parallel(server, 1, PASSWORD) == [454]
    log = server.log_path.read_text()
    checked = [line for line in log.splitlines() if "event=auth.failed " in line]
    assert len(checked) == LIMIT, "\n".join(checked)
    refused = [line for line in log.splitlines() if "event=auth.throttled " in line]
    assert len(refused) == 16 - LIMIT + 3
    roles = {line.split("role=", 1)[1].split()[0] for line in checked + refused}
    assert len(roles - {"main"}) >= 2, roles  # the guesses did reach several workers
