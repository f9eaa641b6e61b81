"""The admin HTTPS listener: uvicorn serving an ASGI application (web/) on sockets the app
bound, in the server's own event loop, with the server's TLS context.

uvicorn is used as a library, not as a program: it gets the already-bound sockets (bound
before the privilege drop, like every listener), never installs signal handlers (SIGTERM and
SIGINT belong to app.py, which stops this listener with the others), and logs through the
server's own logging (no access log: the probes would drown it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("mailhouse.admin")

STOP_GRACE = 5.0  # seconds open requests get at shutdown


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the server's signals are app.py's


class HttpListener:
    def __init__(self, app: ASGIApp, sockets: list[socket.socket],
                 tls: ssl.SSLContext | None, *, name: str = "admin") -> None:
        self.sockets = sockets
        self.name = name
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                http="h11", server_header=False, date_header=True,
                                timeout_graceful_shutdown=int(STOP_GRACE),
                                timeout_keep_alive=5, limit_concurrency=100)
        config.load()
        config.ssl = tls  # the mail listeners' context (config.load() built none: no files)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=self.sockets))
        for _ in range(500):  # up to 5 s: uvicorn's startup is a few loop turns
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            await self._task  # raises what stopped it
        for sock in self.sockets:
            host, port = sock.getsockname()[:2]
            log.info("event=listen service=%s address=%s:%d", self.name, host, port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, STOP_GRACE + 2)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
