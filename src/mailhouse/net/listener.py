"""Listening sockets shared by every protocol: connection caps, idle timers, and a shutdown that
lets sessions finish what they are doing before the process exits.

Sessions are asyncio Protocols (no stream objects, no task per connection): the cheapest way to
run many short SMTP sessions on one core. Timers are swept once a second instead of re-armed on
every read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("mailhouse.net")

SWEEP_INTERVAL = 1.0  # seconds between idle/lifetime checks
ACCEPT_BACKOFF = 0.0005  # s per running session a worker waits before taking a shared accept
ACCEPT_BACKOFF_MAX = 0.02
ACCEPT_PAUSE = 0.1  # s without accepting after accept() failed (out of file descriptors …)


class Session(Protocol):
    def request_shutdown(self) -> None:
        """Stop at the next safe point (between transactions)."""

    def check_timers(self, now: float) -> None:
        """Close the session if it has been idle or alive too long."""

    def abort(self) -> None:
        """Close now, whatever it is doing (shutdown grace exceeded)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 1000
    max_connections_per_ip: int = 100


class ConnectionTracker:
    """Counts connections globally and per client address; knows every live session."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.sessions: set[Session] = set()
        self.closing = False
        self._sweeper: asyncio.Task[None] | None = None

    def admit(self, ip: str) -> bool:
        if self.closing or self.total >= self.limits.max_connections:
            return False
        if self.per_ip[ip] >= self.limits.max_connections_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="sweeper")

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for session in list(self.sessions):
                try:
                    session.check_timers(now)
                except Exception:
                    log.exception("event=session.timer_failed")

    async def shutdown(self, grace: float) -> None:
        """Ask every session to stop; after `grace` seconds, abort the stragglers."""
        self.closing = True
        for session in list(self.sessions):
            session.request_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, str]:
    """("ip", "ip:port") of the client, IPv6 in brackets."""
    peer = transport.get_extra_info("peername")
    if not peer:
        return "unknown", "unknown"
    ip, port = str(peer[0]), peer[1]
    return ip, (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")


class Listener:
    """One named service (smtp, imaps…) on one or more endpoints.

    `start()` binds and serves. For worker processes (pop3_process.py) the parent only
    `bind()`s (before dropping privileges) and hands the sockets on; each worker serves them with
    `Listener(..., sockets=...)`."""

    def __init__(self, name: str, endpoints: list[tuple[str, int]],
                 factory: Callable[[], asyncio.Protocol] | None,
                 ssl_context: ssl.SSLContext | None = None,
                 sockets: list[socket.socket] | None = None,
                 load: Callable[[], int] | None = None) -> None:
        self.name = name
        self.endpoints = endpoints
        self._factory = factory
        self._ssl = ssl_context
        self._servers: list[asyncio.Server] = []
        self.sockets: list[socket.socket] = list(sockets or [])  # bound here or handed in
        self._accepting: set[asyncio.Task[None]] = set()
        self._load = load  # sessions this worker runs (shared sockets only)
        self._readers: list[int] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._factory is not None
        if self.sockets and self._load is None:  # bound by root before the drop (App.start)
            for sock in self.sockets:
                server = await loop.create_server(
                    self._factory, sock=sock, ssl=self._ssl, backlog=1024,
                    ssl_handshake_timeout=30 if self._ssl else None)
                self._servers.append(server)
                host, port = sock.getsockname()[:2]
                log.info("event=listen service=%s address=%s:%d tls=%s", self.name, host, port,
                         "implicit" if self._ssl else "starttls")
            return
        if self.sockets:  # a worker: the sockets are shared with its siblings
            for sock in self.sockets:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._readable, sock)
                self._readers.append(sock.fileno())
            return
        for host, port in self.endpoints:
            server = await loop.create_server(
                self._factory, host, port, ssl=self._ssl, backlog=1024, reuse_address=True,
                ssl_handshake_timeout=30 if self._ssl else None)
            self._servers.append(server)
            log.info("event=listen service=%s address=%s:%d tls=%s", self.name, host,
                     server.sockets[0].getsockname()[1],
                     "implicit" if self._ssl else "starttls")

    def _readable(self, sock: socket.socket) -> None:
        """A connection waits on a socket shared with sibling workers: every worker is woken.
        One with sessions already steps back for a moment (ACCEPT_BACKOFF per session), so the
        least busy worker takes it; then each takes one connection, not the whole backlog as
        `create_server` would."""
        # Sessions, and connections still in their TLS handshake (not sessions yet).
        load = (self._load() if self._load is not None else 0) + len(self._accepting)
        if load <= 0:
            self._accept_one(sock)
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(min(load * ACCEPT_BACKOFF, ACCEPT_BACKOFF_MAX), self._after_backoff, sock)

    def _after_backoff(self, sock: socket.socket) -> None:
        if sock.fileno() not in self._readers:
            return  # stop_accepting() came meanwhile
        self._accept_one(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)

    def _accept_one(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # a sibling was faster
        except OSError as exc:  # EMFILE, ENOBUFS …: log, pause (no busy loop), keep listening
            log.warning("event=accept_failed service=%s error=%s", self.name, exc)
            loop = asyncio.get_running_loop()
            if loop.remove_reader(sock.fileno()):
                loop.call_later(ACCEPT_PAUSE, self._after_backoff, sock)
            return
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        assert self._factory is not None
        try:
            await loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl,
                ssl_handshake_timeout=30 if self._ssl else None)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.info("event=connection.failed service=%s error=%s", self.name, exc)
            conn.close()

    def bind(self) -> None:
        """Bind and listen on every endpoint without serving: the sockets are for workers."""
        for host, port in self.endpoints:
            self.sockets.extend(bind_sockets(host, port))
            log.info("event=listen service=%s address=%s:%d tls=%s workers=yes", self.name,
                     host, self.sockets[-1].getsockname()[1],
                     "implicit" if self._ssl else "starttls")

    def bound_ports(self) -> list[int]:
        if self.sockets and not self._servers:
            return [sock.getsockname()[1] for sock in self.sockets]
        return [sock.getsockname()[1] for s in self._servers for sock in s.sockets]

    async def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        if self._readers:
            loop = asyncio.get_running_loop()
            for fd in self._readers:
                loop.remove_reader(fd)  # harmless while backing off (no reader then)
            self._readers.clear()

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()


def bind_sockets(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """What `loop.create_server(host=..., port=...)` binds: one listening socket per address the
    host resolves to (IPv6 ones v6-only), SO_REUSEADDR, non-blocking."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out
