"""The admin HTTPS listener's application: the health probes and metrics (web/health.py), the
JSON API (web/api.py, under /api/) and the web admin's pages (web/pages.py, under /). Each face
gets the same `AdminContext`, so both reach the server through the same service layer (service/)
that the CLI uses, and nothing exists in one face and not the other.
"""

from __future__ import annotations

import logging
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
from mailhouse.web.sessions import Bootstrap

log = logging.getLogger("mailhouse.admin")


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
    # the self-signed one (service/cert_info.presented_certificate).
    certificate: Callable[[], Path] | None = None
    # The web admin's first-start secret (web/sessions.py); armed by `arm_bootstrap`.
    bootstrap: Bootstrap = field(default_factory=Bootstrap)


FaceRoutes = Callable[[AdminContext], list[BaseRoute]]


def build_app(context: AdminContext, faces: tuple[FaceRoutes, ...] = ()) -> Starlette:
    """`faces`: each adds its routes (the API's, the pages'); the probes come first."""
    routes: list[BaseRoute] = health_routes(context.readiness, context.metrics)
    for face in faces:
        routes += face(context)
    return Starlette(routes=routes)


async def arm_bootstrap(context: AdminContext, bases: list[str]) -> str | None:
    """At start, with no operator yet: arm the one-time setup secret and return the lines to
    print beside the start banner (`bases`: the listener's https://host:port). Never a default
    password: whoever can read the server's start output makes the first operator."""
    if await context.store.list_admins():
        return None
    secret = context.bootstrap.arm()
    log.warning("event=admin.bootstrap no operator exists; the setup link is on stderr "
                "(valid until used or the server restarts)")
    links = "\n".join(f"  {base}/setup?token={secret}" for base in bases)
    return ("No operator exists yet. Make the first one in a browser (valid once, until "
            f"restart):\n{links}\nor on the command line: mailhouse operator add NAME")
