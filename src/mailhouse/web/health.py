"""/healthz/live and /healthz/ready, as container runtimes and load balancers probe them.

Live: the process's event loop answers (nothing else is asked, so a slow store never makes a
supervisor kill a server that is only busy). Ready: this server can take mail now — every
listener accepting, the store answering a read within a bound, the queue process running when
there is one. Each check says what it found, so a 503 explains itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

NO_STORE = {"Cache-Control": "no-store"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str


Readiness = Callable[[], Awaitable[Mapping[str, Check]]]


def build_app(readiness: Readiness,
              metrics: Callable[[], Awaitable[bytes]] | None = None) -> Starlette:
    """The probes alone (tests); the server serves web/admin.py's app, which includes them."""
    return Starlette(routes=health_routes(readiness, metrics))


def health_routes(readiness: Readiness,
                  metrics: Callable[[], Awaitable[bytes]] | None = None) -> list[BaseRoute]:
    """`metrics`: the Prometheus exposition (metrics.render), served at /metrics."""
    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "live"}, headers=NO_STORE)

    async def ready(request: Request) -> JSONResponse:
        checks = await readiness()
        ok = all(check.ok for check in checks.values())
        body = {"status": "ready" if ok else "not ready",
                "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}}
        return JSONResponse(body, status_code=200 if ok else 503, headers=NO_STORE)

    async def exposition(request: Request) -> Response:
        assert metrics is not None
        return Response(await metrics(), media_type=METRICS_TYPE, headers=NO_STORE)

    routes: list[BaseRoute] = [Route("/healthz/live", live, methods=["GET", "HEAD"]),
                               Route("/healthz/ready", ready, methods=["GET", "HEAD"])]
    if metrics is not None:
        routes.append(Route("/metrics", exposition, methods=["GET", "HEAD"]))
    return routes
