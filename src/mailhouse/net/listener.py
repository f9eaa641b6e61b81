"""Listening sockets shared by every protocol: connection caps, idle timers, and a shutdown that
lets sessions finish what they are doing before the process exits.

Sessions are asyncio Protocols (no stream objects, no task per connection): the cheapest way to
run many short SMTP sessions on one core. Timers are swept once a second instead of re-armed on
every read.

Connections are counted when they are accepted, before any TLS handshake: per service (MX,
submission, POP3: a `ConnectionPool` each, so a flood on one listener never refuses clients of
another), per client address within a service (IPv6 per /64, as the login throttle counts), and
in all (`ConnectionTracker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mailhouse import metrics
from mailhouse.service.throttle import ip_key

log = logging.getLogger("mailhouse.net")

SWEEP_INTERVAL = 1.0  # seconds between idle/lifetime checks
ACCEPT_BACKOFF = 0.0005  # s per running session a worker waits before taking a shared accept
ACCEPT_BACKOFF_MAX = 0.02
ACCEPT_PAUSE = 0.1  # s without accepting after accept() failed (out of file descriptors …)
ACCEPT_BATCH = 32  # connections taken per wake-up on a socket this process alone serves


class Session(Protocol):
    def request_shutdown(self) -> None:
        """Stop at the next safe point (between transactions)."""

    def check_timers(self, now: float) -> None:
        """Close the session if it has been idle or alive too long, or stopped reading."""

    def abort(self) -> None:
        """Close now, whatever it is doing (shutdown grace exceeded)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """One service's caps: connections in all, and per client address (IPv6: per /64)."""

    max_connections: int = 1000
    max_connections_per_ip: int = 100


class ConnectionTracker:
    """Every live session of the process, the process-wide cap, the timer sweep, shutdown.
    Admission goes through one `ConnectionPool` per service (`pool()`)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.total = 0
        self.sessions: set[Session] = set()
        self.closing = False
        self.pools: dict[str, ConnectionPool] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def pool(self, name: str, limits: ConnectionLimits) -> ConnectionPool:
        """The pool of one service (smtp, submission, pop3), made on first use."""
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = ConnectionPool(self, name, limits)
        return pool

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


class ConnectionPool:
    """One service's connections: its own total and per-address caps, within the tracker's."""

    def __init__(self, tracker: ConnectionTracker, name: str, limits: ConnectionLimits) -> None:
        self.tracker = tracker
        self.name = name
        self.limits = limits
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> Slot | None:
        """A place for a connection from `ip`, or None when a cap (or shutdown) refuses it."""
        tracker = self.tracker
        if tracker.closing or tracker.total >= tracker.max_connections:
            return None
        if self.total >= self.limits.max_connections:
            return None
        key = ip_key(ip)
        if self.per_ip[key] >= self.limits.max_connections_per_ip:
            return None
        tracker.total += 1
        self.total += 1
        self.per_ip[key] += 1
        metrics.get().connections.labels(self.name).inc()
        return Slot(self, key)

    def give_back(self, key: str) -> None:
        """For Slot.release()."""
        self.tracker.total -= 1
        self.total -= 1
        self.per_ip[key] -= 1
        if self.per_ip[key] <= 0:
            del self.per_ip[key]


class Slot:
    """One admitted connection's place in its pool. `release()` may be called more than once:
    by the listener when the TLS handshake fails, by the session when its connection is lost."""

    __slots__ = ("_key", "_pool")

    def __init__(self, pool: ConnectionPool, key: str) -> None:
        self._pool: ConnectionPool | None = pool
        self._key = key

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.give_back(self._key)


class SessionFactory(Protocol):
    """Makes the protocol of one connection; `slot`: already admitted by the listener."""

    def __call__(self, slot: Slot | None = None) -> asyncio.Protocol: ...


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, str]:
    """("ip", "ip:port") of the client, IPv6 in brackets."""
    return address_of(transport.get_extra_info("peername"))


def address_of(peer: Any) -> tuple[str, str]:
    """("ip", "ip:port") from a socket address, IPv6 in brackets."""
    if not peer:
        return "unknown", "unknown"
    ip, port = str(peer[0]), peer[1]
    return ip, (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")


class Listener:
    """One named service (smtp, imaps…) on one or more endpoints.

    `start()` binds and serves. For worker processes (worker_process.py) the parent only
    `bind()`s (before dropping privileges) and hands the sockets on; each worker serves them with
    `Listener(..., sockets=...)`.

    Plaintext ports are served by `create_server`; the session admits itself in
    connection_made. Implicit-TLS ports (`ssl_context`) and shared worker sockets are accepted
    here one connection at a time, so that on a TLS port the caps are applied at accept, before
    the handshake (a refused client is closed at once, without a byte: a plaintext reply on a
    TLS port is noise), and the handshake is bounded by `handshake_timeout`. (Starting TLS from
    connection_made instead would race: asyncio before 3.12 and uvloop ignore pause_reading()
    there, so the ClientHello could reach the plaintext protocol.)"""

    def __init__(self, name: str, endpoints: list[tuple[str, int]],
                 factory: SessionFactory | None,
                 ssl_context: ssl.SSLContext | None = None,
                 sockets: list[socket.socket] | None = None,
                 load: Callable[[], int] | None = None,
                 pool: ConnectionPool | None = None,
                 handshake_timeout: float = 10.0) -> None:
        self.name = name
        self.endpoints = endpoints
        self._factory = factory
        self._ssl = ssl_context
        self._servers: list[asyncio.Server] = []
        self.sockets: list[socket.socket] = list(sockets or [])  # bound here or handed in
        self._accepting: set[asyncio.Task[None]] = set()
        self._load = load  # sessions this worker runs (shared sockets only)
        self._readers: list[int] = []
        self._pool = pool  # admission at accept (TLS ports)
        self._handshake_timeout = handshake_timeout
        self._bound_here = False  # sockets this listener alone serves: closed by stop_accepting()
        assert ssl_context is None or factory is None or pool is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._factory is not None
        if self._ssl is not None and not self.sockets:
            self.bind(workers=False)  # an implicit-TLS port: accepted here
        if self.sockets and (self._ssl is not None or self._load is not None):
            self._bound_here = self._load is None  # not shared with sibling workers
            for sock in self.sockets:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._readable, sock)
                self._readers.append(sock.fileno())
            return
        if self.sockets:  # plaintext, bound by root before the drop (App.start)
            for sock in self.sockets:
                server = await loop.create_server(self._factory, sock=sock, backlog=1024)
                self._servers.append(server)
                host, port = sock.getsockname()[:2]
                log.info("event=listen service=%s address=%s:%d tls=starttls", self.name,
                         host, port)
            return
        for host, port in self.endpoints:
            server = await loop.create_server(
                self._factory, host, port, backlog=1024, reuse_address=True)
            self._servers.append(server)
            log.info("event=listen service=%s address=%s:%d tls=starttls", self.name, host,
                     server.sockets[0].getsockname()[1])

    def _readable(self, sock: socket.socket) -> None:
        """A connection waits. Alone on the socket: take what is there (a few at a time).
        On a socket shared with sibling workers every worker is woken: one with sessions
        already steps back for a moment (ACCEPT_BACKOFF per session), so the least busy worker
        takes it; then each takes one connection, not the whole backlog as `create_server`
        would."""
        if self._load is None:
            for _ in range(ACCEPT_BATCH):
                if not self._accept_one(sock):
                    break
            return
        # Sessions, and accepted sockets not yet handed to one (on a TLS port those hold a slot
        # already: counted in the pool).
        load = self._load() + (0 if self._ssl else len(self._accepting))
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

    def _accept_one(self, sock: socket.socket) -> bool:
        """Accept one connection; False when there was none (or accept failed)."""
        try:
            conn, address = sock.accept()
        except (BlockingIOError, InterruptedError):
            return False  # a sibling was faster
        except OSError as exc:  # EMFILE, ENOBUFS …: log, pause (no busy loop), keep listening
            log.warning("event=accept_failed service=%s error=%s", self.name, exc)
            loop = asyncio.get_running_loop()
            if loop.remove_reader(sock.fileno()):
                loop.call_later(ACCEPT_PAUSE, self._after_backoff, sock)
            return False
        slot = None
        if self._ssl is not None and self._pool is not None:
            ip, peer = address_of(address)
            slot = self._pool.admit(ip)
            if slot is None:
                log.info("event=connection.refused service=%s peer=%s reason=limit", self.name,
                         peer)
                conn.close()
                return True
        task = asyncio.get_running_loop().create_task(self._connect(conn, slot))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)
        return True

    async def _connect(self, conn: socket.socket, slot: Slot | None) -> None:
        loop = asyncio.get_running_loop()
        assert self._factory is not None
        factory = self._factory if slot is None else functools.partial(self._factory, slot)
        try:
            if self._ssl is None:
                await loop.connect_accepted_socket(factory, conn)
            else:
                await loop.connect_accepted_socket(
                    factory, conn, ssl=self._ssl, ssl_handshake_timeout=self._handshake_timeout)
        except Exception as exc:  # OSError, ssl.SSLError, the handshake deadline …
            log.info("event=connection.failed service=%s error=%s", self.name, exc)
            if slot is not None:
                slot.release()
            conn.close()

    def bind(self, *, workers: bool = True) -> None:
        """Bind and listen on every endpoint without serving: the sockets are for workers (or
        for `start()`, which accepts implicit-TLS connections itself)."""
        for host, port in self.endpoints:
            self.sockets.extend(bind_sockets(host, port))
            log.info("event=listen service=%s address=%s:%d tls=%s%s", self.name,
                     host, self.sockets[-1].getsockname()[1],
                     "implicit" if self._ssl else "starttls", " workers=yes" if workers else "")

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
        if self._bound_here:
            self.close_sockets()

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
