"""Listening sockets shared by every protocol: connection caps, and a shutdown that lets sessions
finish what they are doing before the process exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("mailhouse.net")


class Session(Protocol):
    def request_shutdown(self) -> None:
        """Stop at the next safe point (between transactions)."""


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


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
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False

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

    async def shutdown(self, grace: float) -> None:
        """Ask every session to stop; after `grace` seconds, cancel the stragglers."""
        self.closing = True
        for session in list(self.sessions):
            session.request_shutdown()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)


def split_peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """("ip", "ip:port") of the client, IPv6 in brackets."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return "unknown", "unknown"
    ip, port = str(peer[0]), peer[1]
    return ip, (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")


class Listener:
    """One named service (smtp, imaps…) on one or more endpoints."""

    def __init__(self, name: str, endpoints: list[tuple[str, int]], handler: Handler,
                 tracker: ConnectionTracker, busy_reply: bytes,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.endpoints = endpoints
        self._handler = handler
        self._tracker = tracker
        self._busy = busy_reply
        self._ssl = ssl_context
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        for host, port in self.endpoints:
            server = await asyncio.start_server(
                self._on_connect, host, port, ssl=self._ssl, backlog=1024,
                reuse_address=True, ssl_handshake_timeout=30 if self._ssl else None,
                limit=1 << 20)
            self._servers.append(server)
            log.info("event=listen service=%s address=%s:%d tls=%s", self.name, host, port,
                     "implicit" if self._ssl else "starttls")

    def bound_ports(self) -> list[int]:
        return [sock.getsockname()[1] for s in self._servers for sock in s.sockets]

    async def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 0.1)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        ip, peer = split_peer(writer)
        if not self._tracker.admit(ip):
            log.info("event=connection.refused service=%s peer=%s reason=limit", self.name, peer)
            with contextlib.suppress(Exception):
                writer.write(self._busy)
                writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tracker.tasks.add(task)
        try:
            await self._handler(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Cancelled by shutdown after the grace period. Nothing awaits this task, and
            # re-raising only makes asyncio log a spurious error.
            log.info("event=session.cancelled service=%s peer=%s", self.name, peer)
        except Exception:
            log.exception("event=session.crashed service=%s peer=%s", self.name, peer)
        finally:
            self._tracker.tasks.discard(task)
            self._tracker.release(ip)
            with contextlib.suppress(Exception):
                writer.close()
