"""The web admin (issue 9 §2): server-rendered pages for operators, on the admin listener.

This module holds what every page shares — templates, the session cookie, the CSRF and Origin
checks, the security headers, the throttled login, the first-start setup — and composes the
face: `admin_pages(context)` returns its routes (web/admin.py mounts them beside the probes and
the JSON API). The pages themselves are in web/pages_manage.py; every change they make goes
through the same services the CLI uses (service/accounts.py, service/queue_admin.py,
service/operators.py) with the actor `operator:<name>`, so it lands in the same audit log.

No JavaScript: forms post and the server redirects (POST/redirect/GET), so the Content Security
Policy can forbid every script, and the pages work in any browser, on any screen.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from mailhouse.recent_errors import RecentErrors
from mailhouse.service.accounts import AccountError
from mailhouse.service.operators import Operators, check_operator_password
from mailhouse.service.throttle import CheckResult, ip_key
from mailhouse.store.base import AdminAccount
from mailhouse.store.rules import check_admin_name
from mailhouse.web.admin import AdminContext
from mailhouse.web.sessions import FormTokens, Session, Sessions

log = logging.getLogger("mailhouse.admin")

HERE: Final = Path(__file__).parent
COOKIE: Final = "__Host-mailhouse-admin"  # __Host-: Secure, Path=/, no Domain (RFC 6265bis)
MAX_FORM_BYTES: Final = 16 * 1024  # a form body larger than this is refused (413)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",  # for browsers older than frame-ancestors
    # Not no-referrer: under it browsers send `Origin: null` with every POST (Fetch §3.1,
    # "serializing a request origin"), which would blind the Origin check. same-origin sends
    # nothing to other sites, which is what no-referrer is for here.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

# The menu: (path, title).
NAVIGATION: Final = (("/", "Dashboard"), ("/domains", "Domains"), ("/checks", "Checks"),
                     ("/users", "Users"), ("/queue", "Queue"), ("/trace", "Message trace"),
                     ("/audit", "Audit log"), ("/operators", "Operators"))


class Refused(Exception):
    """Answer the request with this status and message page (CSRF, size, throttling)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Kit:
    """The face's state: one per admin listener, built with the app."""

    context: AdminContext
    sessions: Sessions = field(init=False)
    form_tokens: FormTokens = field(init=False)
    errors: RecentErrors = field(default_factory=RecentErrors.shared)
    env: jinja2.Environment = field(init=False)

    def __post_init__(self) -> None:
        # The context's clock (time.time in the server), so tests can move time.
        self.sessions = Sessions(clock=self.context.clock)
        self.form_tokens = FormTokens(clock=self.context.clock)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)

    def operators(self) -> Operators:
        return Operators(self.context.store, self.context.passwords, self.context.clock)

    # --- responses ---------------------------------------------------------------------------
    def render(self, request: Request, template: str, *, status: int = 200,
               session: Session | None = None, **values: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", path=request.url.path,
            navigation=NAVIGATION, **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def message(self, request: Request, status: int, text: str,
                session: Session | None = None) -> HTMLResponse:
        return self.render(request, "status.html", status=status, session=session,
                           title=_TITLES.get(status, "Error"), text=text)

    @staticmethod
    def redirect(location: str) -> RedirectResponse:
        return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)

    # --- request checks ------------------------------------------------------------------------
    async def form(self, request: Request) -> dict[str, str]:
        """The urlencoded body (first value of each field), after the Origin check; bounded."""
        check_origin(request)
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise Refused(413, "The form is too large.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(413, "The form is too large.")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True,
                              max_num_fields=100)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "The form could not be read.") from None
        return {name: values[0] for name, values in fields.items()}

    async def session_of(self, request: Request) -> Session | None:
        """The request's live session, if its operator still exists with the password they
        logged in with: an operator removed or given a new password from any face (the CLI
        included) is logged out at their next request."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        admin = await self.context.store.get_admin(session.operator)
        if admin is None or not hmac.compare_digest(credential(admin.password_hash),
                                                    session.credential):
            self.sessions.end(session.id)
            log.info("event=admin.session_revoked operator=%s", session.operator)
            return None
        return session

    def start_session(self, admin: AdminAccount) -> Session:
        return self.sessions.create(admin.name, credential(admin.password_hash))


def credential(password_hash: str) -> str:
    """What a session remembers of its operator's password: a digest of the stored hash, so a
    changed password ends it (the hash itself stays in the store)."""
    return hashlib.sha256(password_hash.encode()).hexdigest()


class _Static(StaticFiles):
    """The stylesheet, with the pages' headers (nosniff matters most: a browser must never
    run it as anything but CSS)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update({k: v for k, v in SECURITY_HEADERS.items()
                                 if k != "Cache-Control"})
        return response


def check_origin(request: Request) -> None:
    """A state-changing request must come from a page of this site: its Origin (or, if a
    browser sent none, its Referer) must be this listener's own scheme and host. The CSRF token
    is checked as well; this second check costs nothing and stops a token leaked somehow."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if referer is None:
            raise Refused(403, "The request did not say where it came from (no Origin or "
                               "Referer header); refused as a possible cross-site request.")
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if not host or origin.lower() != f"https://{host.lower()}":
        raise Refused(403, "The request came from another site; refused.")


def check_csrf(session: Session, fields: Mapping[str, str]) -> None:
    if not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
        raise Refused(403, "The form had expired or did not come from this admin; reload "
                           "the page and try again.")


_TITLES: Final = {400: "Bad request", 403: "Refused", 404: "Not found",
                  413: "Too large", 429: "Too many attempts"}

Handler = Callable[[Kit, Request, Session], Awaitable[Response]]
FormHandler = Callable[[Kit, Request, Session, dict[str, str]], Awaitable[Response]]


def page(kit: Kit, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page for logged-in operators; others are sent to the login page."""
    async def endpoint(request: Request) -> Response:
        session = await kit.session_of(request)
        if session is None:
            return kit.redirect("/login")
        try:
            return await handler(kit, request, session)
        except Refused as exc:
            return kit.message(request, exc.status, exc.message, session)
    return endpoint


def action(kit: Kit, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """A POST for logged-in operators: Origin and CSRF checked before the handler runs."""
    async def endpoint(request: Request) -> Response:
        session = await kit.session_of(request)
        try:
            fields = await kit.form(request)
            if session is None:
                raise Refused(403, "You are not logged in (or your session expired).")
            check_csrf(session, fields)
            return await handler(kit, request, session, fields)
        except Refused as exc:
            return kit.message(request, exc.status, exc.message, session)
    return endpoint


def actor(session: Session) -> str:
    return f"operator:{session.operator}"


# --- login, logout, setup ------------------------------------------------------------------------

async def login_page(kit: Kit, request: Request) -> Response:
    if await kit.session_of(request) is not None:
        return kit.redirect("/")
    if await setup_pending(kit):
        return kit.redirect("/setup")
    return kit.render(request, "login.html", form_token=kit.form_tokens.issue(), error="")


async def login(kit: Kit, request: Request) -> Response:
    try:
        fields = await kit.form(request)
        if not kit.form_tokens.valid(fields.get("csrf", "")):
            raise Refused(403, "The login form had expired; reload the page and try again.")
    except Refused as exc:
        return kit.message(request, exc.status, exc.message)
    name = fields.get("name", "").strip().lower()
    password = fields.get("password", "")
    client = request.client.host if request.client else "unknown"
    loop = asyncio.get_running_loop()
    started = loop.time()
    throttle = kit.context.login_throttle
    # Counted with the mail logins (one throttle per server), under the client's IP and an
    # operator key of its own: operator names are not mail addresses.
    shown = loggable(name)
    ticket = await throttle.acquire_keys(ip_key(client), f"operator:{shown}")
    delay = kit.context.config.submission.auth_failure_delay
    if ticket is None:
        log.info("event=admin.login_throttled ip=%s operator=%s", client, shown)
        await asyncio.sleep(max(0.0, delay - (loop.time() - started)))
        return kit.message(request, 429, "Too many failed logins from your address or for "
                                         "this operator; wait a few minutes and try again.")
    result = CheckResult.ABANDONED
    try:
        admin = await kit.operators().authenticate(name, password)
        result = CheckResult.FAILURE if admin is None else CheckResult.SUCCESS
    finally:
        throttle.release(ticket, result)
    if admin is None:
        log.info("event=admin.login_failed ip=%s operator=%s", client, shown)
        await asyncio.sleep(max(0.0, delay - (loop.time() - started)))
        return kit.render(request, "login.html", status=401,
                          form_token=kit.form_tokens.issue(),
                          error="Wrong name or password.")
    old = request.cookies.get(COOKIE)
    if old:
        kit.sessions.end(old)
    session = kit.start_session(admin)
    log.info("event=admin.login ip=%s operator=%s", client, admin.name)
    response = kit.redirect("/")
    set_cookie(response, session.id)
    return response


def loggable(name: str) -> str:
    """The name as typed when it can be an operator's, else one shared stand-in: what a client
    types never reaches the log raw (no forged key=value pairs), and every impossible name
    shares one throttle key, as mail logins' invalid names do."""
    try:
        check_admin_name(name)
    except ValueError:
        return "<invalid>"
    return name


def set_cookie(response: Response, session_id: str) -> None:
    # No Max-Age: a browser session cookie; the server's own timeouts end the session.
    response.set_cookie(COOKIE, session_id, path="/", secure=True, httponly=True,
                        samesite="strict")


async def logout(kit: Kit, request: Request, session: Session,
                 fields: dict[str, str]) -> Response:
    kit.sessions.end(session.id)
    log.info("event=admin.logout operator=%s", session.operator)
    response = kit.redirect("/login")
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def setup_pending(kit: Kit) -> bool:
    """Is the bootstrap secret still the way in? Not once an operator exists, however made
    (`mailhouse operator add` while the server runs): then the secret is voided."""
    bootstrap = kit.context.bootstrap
    if bootstrap.armed and await kit.operators().any_exist():
        bootstrap.disarm()
    return bootstrap.armed


async def setup_page(kit: Kit, request: Request) -> Response:
    if not await setup_pending(kit):
        return kit.message(request, 404, "Setup is done: an operator exists. Log in, or add "
                                         "operators with `mailhouse operator add`.")
    return kit.render(request, "setup.html", form_token=kit.form_tokens.issue(),
                      token=request.query_params.get("token", ""), error="", name="")


async def setup(kit: Kit, request: Request) -> Response:
    try:
        fields = await kit.form(request)
        if not kit.form_tokens.valid(fields.get("csrf", "")):
            raise Refused(403, "The setup form had expired; reload the page and try again.")
    except Refused as exc:
        return kit.message(request, exc.status, exc.message)
    bootstrap = kit.context.bootstrap
    name = fields.get("name", "").strip().lower()
    password = fields.get("password", "")
    secret = fields.get("token", "").strip()

    def again(error: str) -> Response:
        return kit.render(request, "setup.html", status=400,
                          form_token=kit.form_tokens.issue(), token=secret, error=error,
                          name=name)

    if password != fields.get("password2", ""):
        return again("The two passwords differ.")
    try:
        check_operator_password(password)
    except AccountError as exc:
        return again(str(exc))
    if not bootstrap.take(secret):
        log.warning("event=admin.setup_refused ip=%s",
                    request.client.host if request.client else "unknown")
        return kit.message(request, 403, "That setup secret is not valid (used already, or "
                                         "the server restarted since it was printed).")
    operators = kit.operators()
    try:
        if await operators.any_exist():
            return kit.message(request, 403, "An operator exists already; log in.")
        admin = await operators.add(name, password, actor="setup:bootstrap")
    except AccountError as exc:
        bootstrap.restore(secret)
        return again(str(exc))
    except BaseException:
        bootstrap.restore(secret)
        raise
    log.info("event=admin.setup operator=%s", name)
    session = kit.start_session(admin)
    response = kit.redirect("/")
    set_cookie(response, session.id)
    return response


def admin_pages(context: AdminContext) -> list[BaseRoute]:
    """The web admin face (app.ADMIN_FACES)."""
    from mailhouse.web import (  # they build on this module
        pages_manage,
        pages_operators,
        pages_trace,
    )

    kit = Kit(context)

    def bound(fn: Callable[[Kit, Request], Awaitable[Response]]
              ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await fn(kit, request)
        return endpoint

    routes: list[BaseRoute] = [
        Route("/login", bound(login_page), methods=["GET"]),
        Route("/login", bound(login), methods=["POST"]),
        Route("/logout", action(kit, logout), methods=["POST"]),
        Route("/setup", bound(setup_page), methods=["GET"]),
        Route("/setup", bound(setup), methods=["POST"]),
        Mount("/static", _Static(directory=HERE / "static"), name="static"),
    ]
    return (routes + pages_manage.routes(kit) + pages_trace.routes(kit)
            + pages_operators.routes(kit))
