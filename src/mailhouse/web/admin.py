"""The admin HTTPS listener's application: the health probes and metrics (web/health.py), the
JSON API (web/api.py, under /api/) and the web admin's pages (web/pages.py, under /). Each face
gets the same `AdminContext`, so both reach the server through the same service layer (service/)
that the CLI uses, and nothing exists in one face and not the other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from mailhouse.config import Config
from mailhouse.service.accounts import Passwords
from mailhouse.service.throttle import LoginThrottle
from mailhouse.store.base import Store
from mailhouse.web.health import Readiness, health_routes


@dataclass(slots=True)
class AdminContext:
    """What the admin faces may use: the running server's own objects, never copies."""

    config: Config
    store: Store
    passwords: Passwords
    # The server's one login throttle: operator logins are counted with mail logins.
    login_throttle: LoginThrottle
    readiness: Readiness
    metrics: Callable[[], Awaitable[bytes]] | None = None
    clock: Callable[[], float] = field(default=time.time)
    # The certificate file the mail listeners present now (App.tls_files); None: tls.cert, or
    # the self-signed one (service/cert_info.served_certificate).
    certificate: Callable[[], Path] | None = None


FaceRoutes = Callable[[AdminContext], list[BaseRoute]]


def build_app(context: AdminContext, faces: tuple[FaceRoutes, ...] = ()) -> Starlette:
    """`faces`: each adds its routes (the API's, the pages'); the probes come first."""
    routes: list[BaseRoute] = health_routes(context.readiness, context.metrics)
    for face in faces:
        routes += face(context)
    return Starlette(routes=routes)
