"""Loopback port allocation and readiness probes (127.0.0.1 only)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

from cryptography import x509

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0), so two callers never get the same one while both
    sockets are open; a small race remains between close and the server's bind, which callers
    handle by retrying the start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free ports (all sockets held open until every port is known)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def smtp_greets(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> bool:
    """True if host:port accepts a connection and sends an SMTP 220 greeting."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            return data.startswith(b"220")
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; bounded in time.

    `abort` is polled too: a non-None string stops the wait early by raising RuntimeError with
    that text (e.g. "the server exited with status 1").
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if abort is not None:
            reason = abort()
            if reason is not None:
                raise RuntimeError(reason)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def served_serial(port: int) -> int:
    """The serial number of the certificate a TLS handshake on `port` gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
