"""The host checks of `mailhouse doctor` (service/doctor_host.py): certificate, disk space, queue
age, clock, the SMTP banner and the listeners, with an injected clock, statvfs, queue and
reference time, and servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailhouse.service.doctor import (
    CERT_EXPIRY_WARNING,
    CLOCK_SKEW_FAIL,
    CLOCK_SKEW_WARN,
    DISK_FAIL_BYTES,
    DISK_WARN_BYTES,
    QUEUE_AGE_FAIL,
    QUEUE_AGE_WARN,
    Doctor,
    DoctorSetup,
    Listener,
    Status,
)
from mailhouse.service.doctor_dns import DnsLookups, make_resolver
from mailhouse.service.doctor_host import (
    NTP_EPOCH_OFFSET,
    check_banner,
    check_certificate,
    check_clock,
    check_disk,
    check_ports,
    check_queue_age,
    sntp_time,
)
from mailhouse.store.base import QueueRequest, RecipientStatus, RecipientUpdate
from mailhouse.store.memory import MemoryStore

T = TypeVar("T")
HOST = "mx.example.test"
NOW = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0
GIB = 1 << 30


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_doctor(tmp_path: Path, *, cert: Path | None = None,
                listeners: tuple[Listener, ...] = (), clock: float = NOW,
                **extra: Any) -> Doctor:
    setup = DoctorSetup(hostname=HOST, domains=(), records={}, data_dir=tmp_path / "data",
                        cert_path=cert, listeners=listeners)
    resolver = make_resolver([("127.0.0.1", 9)], 0.1)  # never asked by these checks
    return Doctor(setup, DnsLookups(resolver), clock=lambda: clock, connect_timeout=2.0,
                  **extra)


# --- certificate --------------------------------------------------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())


def write_cert(tmp_path: Path, *, names: list[str], not_before: float, not_after: float,
               self_signed: bool = False) -> Path:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    issuer = subject if self_signed else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(_KEY.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(datetime.datetime.fromtimestamp(not_before, datetime.UTC))
               .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.UTC)))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(_KEY, hashes.SHA256())  # signed by itself: the issuer name decides
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_valid_certificate_is_ok(tmp_path: Path) -> None:
    cert = write_cert(tmp_path, names=["other.example.test", HOST], not_before=NOW - DAY,
                      not_after=NOW + 90 * DAY)
    result = check_certificate(make_doctor(tmp_path, cert=cert))
    assert result.status is Status.OK and "valid until 2027-04-15" in result.found


def test_wildcard_certificate_matches_one_label(tmp_path: Path) -> None:
    cert = write_cert(tmp_path, names=["*.example.test"], not_before=NOW - DAY,
                      not_after=NOW + 90 * DAY)
    assert check_certificate(make_doctor(tmp_path, cert=cert)).status is Status.OK
    cert = write_cert(tmp_path, names=["*.test"], not_before=NOW - DAY,
                      not_after=NOW + 90 * DAY)
    assert check_certificate(make_doctor(tmp_path, cert=cert)).status is Status.FAIL


def test_certificate_expiring_within_the_warning_warns(tmp_path: Path) -> None:
    cert = write_cert(tmp_path, names=[HOST], not_before=NOW - DAY,
                      not_after=NOW + CERT_EXPIRY_WARNING - 60)
    result = check_certificate(make_doctor(tmp_path, cert=cert))
    assert result.status is Status.WARN and "expires in 14 days" in result.found
    assert "renew" in result.fix
    cert = write_cert(tmp_path, names=[HOST], not_before=NOW - DAY,
                      not_after=NOW + CERT_EXPIRY_WARNING + 60)
    assert check_certificate(make_doctor(tmp_path, cert=cert)).status is Status.OK


def test_expired_or_not_yet_valid_certificate_fails(tmp_path: Path) -> None:
    cert = write_cert(tmp_path, names=[HOST], not_before=NOW - 90 * DAY, not_after=NOW - 1)
    result = check_certificate(make_doctor(tmp_path, cert=cert))
    assert result.status is Status.FAIL and "expired on" in result.found and result.fix
    cert = write_cert(tmp_path, names=[HOST], not_before=NOW + 60, not_after=NOW + 90 * DAY)
    result = check_certificate(make_doctor(tmp_path, cert=cert))
    assert result.status is Status.FAIL and "not valid before" in result.found


@pytest.mark.parametrize("names", [["other.example.test"], [], ["a.mx.example.test"]])
def test_certificate_for_another_name_fails(tmp_path: Path, names: list[str]) -> None:
    cert = write_cert(tmp_path, names=names, not_before=NOW - DAY, not_after=NOW + 90 * DAY)
    result = check_certificate(make_doctor(tmp_path, cert=cert))
    assert result.status is Status.FAIL and f"not {HOST}" in result.found
    assert "tls.cert" in result.fix and "RFC 6125" in result.why_it_matters


def test_self_signed_certificate_warns(tmp_path: Path) -> None:
    cert = write_cert(tmp_path, names=[HOST], not_before=NOW - DAY, not_after=NOW + 365 * DAY,
                      self_signed=True)
    result = check_certificate(make_doctor(tmp_path, cert=cert))
    assert result.status is Status.WARN and "self-signed" in result.found


def test_no_or_unreadable_certificate(tmp_path: Path) -> None:
    assert check_certificate(make_doctor(tmp_path)).status is Status.WARN
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert check_certificate(make_doctor(tmp_path, cert=bad)).status is Status.FAIL
    result = check_certificate(make_doctor(tmp_path, cert=tmp_path / "missing.pem"))
    assert result.status is Status.FAIL and "No such file" in result.found


# --- disk ---------------------------------------------------------------------------------------

def statvfs(total: int, free: int) -> Any:
    block = 4096

    def fake(path: Path) -> os.statvfs_result:
        return os.statvfs_result((block, block, total // block, free // block, free // block,
                                  1000, 1000, 1000, 0, 255))
    return fake


@pytest.mark.parametrize(("total", "free", "status"), [
    (100 * GIB, 50 * GIB, Status.OK),
    (100 * GIB, 11 * GIB, Status.OK),
    (100 * GIB, 9 * GIB, Status.WARN),  # under 10 %
    (5 * GIB, 1 * GIB + 4096, Status.OK),  # 20 %, just over 1 GiB
    (5 * GIB, 1 * GIB - 4096, Status.WARN),  # under 1 GiB
    (100 * GIB, DISK_FAIL_BYTES - 4096, Status.FAIL),  # under 100 MiB
    (1000 * GIB, 9 * GIB, Status.FAIL),  # under 1 %
])
def test_disk_space_limits(tmp_path: Path, total: int, free: int, status: Status) -> None:
    assert DISK_WARN_BYTES == GIB
    result = check_disk(make_doctor(tmp_path, statvfs=statvfs(total, free)))
    assert result.status is status, result
    assert str(tmp_path) in result.found  # data_dir does not exist yet: its parent is measured
    if status is not Status.OK:
        assert result.fix and result.why_it_matters


def test_disk_statvfs_error_fails(tmp_path: Path) -> None:
    def broken(path: Path) -> os.statvfs_result:
        raise PermissionError(13, "Permission denied")
    assert check_disk(make_doctor(tmp_path, statvfs=broken)).status is Status.FAIL


# --- queue age ----------------------------------------------------------------------------------

@pytest.fixture
def store() -> Iterator[MemoryStore]:
    memory = MemoryStore()
    asyncio.run(memory.open())
    yield memory
    asyncio.run(memory.close())


def enqueue(store: MemoryStore, *recipients: str) -> int:
    async def go() -> int:
        spool = store.new_spool()
        await spool.write(b"Subject: x\r\n\r\nx\r\n")
        await store.deliver(spool, [], queue=QueueRequest("a@example.test", recipients))
        return max(m.id for m in await store.queue_list())
    return asyncio.run(go())


@pytest.mark.parametrize(("age", "status"), [
    (60.0, Status.OK), (QUEUE_AGE_WARN - 60, Status.OK), (QUEUE_AGE_WARN + 60, Status.WARN),
    (QUEUE_AGE_FAIL - 60, Status.WARN), (QUEUE_AGE_FAIL + 60, Status.FAIL)])
def test_queue_age_limits(tmp_path: Path, store: MemoryStore, age: float,
                          status: Status) -> None:
    enqueue(store, "b@remote.test")
    result = run(check_queue_age(make_doctor(tmp_path, clock=time.time() + age,
                                             queue=store.queue_list)))
    assert result.status is status, result
    assert result.found.startswith("1 waiting; the oldest (id ")
    if status is not Status.OK:
        assert "mailhouse queue list" in result.fix


def test_queue_age_ignores_finished_recipients(tmp_path: Path, store: MemoryStore) -> None:
    queue_id = enqueue(store, "b@remote.test")
    run(store.queue_update(queue_id, [RecipientUpdate("b@remote.test",
                                                      RecipientStatus.FAILED, 0.0, "550")]))
    doctor = make_doctor(tmp_path, clock=time.time() + 2 * QUEUE_AGE_FAIL,
                         queue=store.queue_list)
    result = run(check_queue_age(doctor))
    assert result.status is Status.OK and result.found == "no message waiting"


def test_queue_not_read_skips(tmp_path: Path) -> None:
    assert run(check_queue_age(make_doctor(tmp_path))).status is Status.SKIP


# --- clock --------------------------------------------------------------------------------------

def reference(offset: float) -> Any:
    async def at() -> float:
        return NOW - offset
    return at


@pytest.mark.parametrize(("skew", "status"), [
    (0.0, Status.OK), (CLOCK_SKEW_WARN - 0.5, Status.OK), (CLOCK_SKEW_WARN + 0.5, Status.WARN),
    (-(CLOCK_SKEW_WARN + 0.5), Status.WARN), (CLOCK_SKEW_FAIL + 1, Status.FAIL)])
def test_clock_skew_limits(tmp_path: Path, skew: float, status: Status) -> None:
    result = run(check_clock(make_doctor(tmp_path, reference_time=reference(skew))))
    assert result.status is status, result
    assert result.found == f"{skew:+.3f} s from the reference"


def test_clock_without_reference_skips(tmp_path: Path) -> None:
    result = run(check_clock(make_doctor(tmp_path)))
    assert result.status is Status.SKIP and "--ntp" in result.fix


class FakeNtp:
    """Answers one NTP client packet with a fixed transmit time, from a thread."""

    def __init__(self, when: float, mode: int = 4) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.when, self.mode = when, mode
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(5)
        try:
            data, peer = self.sock.recvfrom(512)
        except OSError:
            return
        assert data[0] == 0x23 and len(data) == 48
        seconds = int(self.when) + NTP_EPOCH_OFFSET
        fraction = int((self.when % 1) * 2**32)
        reply = bytes([0x20 | self.mode]) + bytes(39) + struct.pack("!II", seconds, fraction)
        self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


def test_sntp_reads_the_servers_time() -> None:
    ntp = FakeNtp(NOW + 0.25)
    try:
        got = run(sntp_time("127.0.0.1", ntp.port, timeout=3))
    finally:
        ntp.close()
    assert NOW + 0.25 <= got < NOW + 1.25


def test_sntp_rejects_a_non_server_reply_and_times_out(tmp_path: Path) -> None:
    ntp = FakeNtp(NOW, mode=3)
    try:
        with pytest.raises(ValueError):
            run(sntp_time("127.0.0.1", ntp.port, timeout=3))
    finally:
        ntp.close()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        doctor = make_doctor(tmp_path, reference_time=lambda: sntp_time("127.0.0.1", port, 0.2))
        result = run(check_clock(doctor))
        assert result.status is Status.SKIP and "timed out" in result.found
    finally:
        silent.close()


# --- banner and ports ---------------------------------------------------------------------------

class Greeter:
    """A TCP server on loopback that writes `greeting` to each connection, from a thread."""

    def __init__(self, greeting: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(self.greeting)
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(100)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def greeter() -> Iterator[Greeter]:
    server = Greeter(f"220 {HOST} ESMTP mailhouse\r\n".encode())
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_banner_naming_the_hostname_is_ok(tmp_path: Path, greeter: Greeter) -> None:
    doctor = make_doctor(tmp_path, listeners=(Listener("smtp", "0.0.0.0", greeter.port),))
    result = run(check_banner(doctor))
    assert result.status is Status.OK
    assert result.found == f"127.0.0.1:{greeter.port}: 220 {HOST} ESMTP mailhouse"


@pytest.mark.parametrize("greeting", [b"220 localhost ESMTP Postfix\r\n", b"554 go away\r\n",
                                      b""])
def test_banner_with_another_name_fails(tmp_path: Path, greeting: bytes) -> None:
    server = Greeter(greeting)
    try:
        doctor = make_doctor(tmp_path, listeners=(Listener("smtp", "127.0.0.1", server.port),))
        result = run(check_banner(doctor))
    finally:
        server.close()
    assert result.status is Status.FAIL and f'hostname = "{HOST}"' in result.fix


def test_banner_with_nothing_listening_fails_and_without_smtp_skips(tmp_path: Path) -> None:
    doctor = make_doctor(tmp_path, listeners=(Listener("smtp", "127.0.0.1", free_port()),))
    result = run(check_banner(doctor))
    assert result.status is Status.FAIL and "start the server" in result.fix
    doctor = make_doctor(tmp_path, listeners=(Listener("imaps", "127.0.0.1", free_port()),))
    assert run(check_banner(doctor)).status is Status.SKIP


def test_ports_answering_here_cannot_prove_reachability(tmp_path: Path,
                                                        greeter: Greeter) -> None:
    listeners = (Listener("smtp", "0.0.0.0", greeter.port),
                 Listener("imaps", "127.0.0.1", greeter.port))
    result = run(check_ports(make_doctor(tmp_path, listeners=listeners)))
    assert result.status is Status.SKIP
    assert f"smtp {greeter.port}, imaps {greeter.port}" in result.found
    assert "not proven by a check from inside" in result.found
    assert f"for p in {greeter.port}; do nc -vz {HOST} $p; done" in result.fix


def test_ports_not_answering_here_fail(tmp_path: Path, greeter: Greeter) -> None:
    closed = free_port()
    listeners = (Listener("smtp", "0.0.0.0", greeter.port), Listener("imaps", "0.0.0.0", closed))
    result = run(check_ports(make_doctor(tmp_path, listeners=listeners)))
    assert result.status is Status.FAIL
    assert result.found.startswith(f"not answering here: imaps 127.0.0.1:{closed} (")
    assert run(check_ports(make_doctor(tmp_path))).status is Status.SKIP


def test_wildcard_listener_is_reached_at_the_declared_address(tmp_path: Path,
                                                               greeter: Greeter) -> None:
    setup = make_doctor(tmp_path).setup
    doctor = make_doctor(tmp_path, listeners=(Listener("smtp", "0.0.0.0", greeter.port),))
    doctor.setup = DoctorSetup(**{**{f: getattr(setup, f) for f in (
        "hostname", "domains", "records", "data_dir", "cert_path")},
        "listeners": doctor.setup.listeners, "public_addresses": ("127.0.0.1", "::1")})
    assert run(check_banner(doctor)).found.startswith(f"127.0.0.1:{greeter.port}:")
