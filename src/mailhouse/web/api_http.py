"""The admin API's HTTP plumbing (web/api.py holds the endpoints): bearer-token checks
(RFC 6750) counted in the server's login throttle, bounded JSON bodies, errors as
`{"error": code, "detail": text}`, and the endpoint table the routes and the OpenAPI
description (web/api_openapi.py) are both made from, so neither can list what the other lacks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mailhouse.errors import MailError
from mailhouse.message.dkim import DkimError
from mailhouse.service.accounts import AccountError, AlreadyExists, InvalidInput, NotFound
from mailhouse.service.api_tokens import SCOPES, ApiTokens
from mailhouse.service.queue_admin import NoSuchMessage
from mailhouse.service.throttle import CheckResult, LoginThrottle, ip_key
from mailhouse.store.base import ApiToken

MAX_API_BODY: Final = 64 * 1024  # octets of a request body; past it: 413
REALM: Final = "mailhouse admin API"
NO_STORE: Final = {"Cache-Control": "no-store"}
_METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status,
                        headers={**NO_STORE, **exc.headers})


def json_response(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status, headers=NO_STORE)


def translate(exc: Exception) -> ApiError | None:
    """The service layer's refusals as HTTP: what the client got wrong (400), what is not
    there (404), what is in the way (409)."""
    if isinstance(exc, InvalidInput):
        return ApiError(400, "invalid_input", str(exc))
    if isinstance(exc, NotFound | NoSuchMessage):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, AlreadyExists):
        return ApiError(409, "exists", str(exc))
    if isinstance(exc, AccountError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, MailError):  # the store failed (disk full, I/O error): try later
        return ApiError(503, "storage_error", exc.reply.text, {"Retry-After": "60"})
    if isinstance(exc, DkimError):  # a key file the operator must fix; the message names it
        return ApiError(500, "dkim_error", str(exc))
    return None


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read at most MAX_API_BODY octets (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not (declared.isascii() and declared.isdigit())
                                 or int(declared) > MAX_API_BODY):
        raise ApiError(413, "too_large", f"a request body is at most {MAX_API_BODY} octets")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_API_BODY:  # chunked bodies are bounded here
            raise ApiError(413, "too_large", f"a request body is at most {MAX_API_BODY} octets")
        chunks.append(chunk)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_input", "the body must be a JSON object")
    return body


def field_of(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
             *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(400, "invalid_input", f"`{name}` is missing or of the wrong type")
    return value


Handler = Callable[[Request, ApiToken], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One operation: what the route table and the OpenAPI description are made of."""

    method: str
    path: str  # under /api/v1, Starlette syntax ("/queue/{id:int}")
    scope: str  # SCOPES' key the token must carry
    summary: str
    handler: Handler = field(compare=False)
    request: dict[str, Any] | None = None  # JSON Schema of the body, when it takes one
    response: dict[str, Any] | None = None  # JSON Schema of a success, None: no body
    status: int = 200
    media_type: str = "application/json"
    query: tuple[tuple[str, str], ...] = ()  # (name, JSON Schema type)


class Guard:
    """Who is asking: a bearer token (RFC 6750 §2.1) checked against the store. Failed checks
    are counted in the server's LoginThrottle under the client's address, as failed mail
    logins are; a client over the limit is answered 429 before its token is looked at."""

    def __init__(self, tokens: ApiTokens, throttle: LoginThrottle) -> None:
        self._tokens = tokens
        self._throttle = throttle

    async def token(self, request: Request) -> ApiToken:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            # RFC 6750 §3.1: no error code when the request carried no credentials at all.
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>",
                           {"WWW-Authenticate": f'Bearer realm="{REALM}"'})
        ipk = ip_key(request.client.host if request.client else "")
        ticket = await self._throttle.acquire_keys(ipk, "api-token:" + ipk)
        if ticket is None:
            retry = max(1, math.ceil(self._throttle.window))
            raise ApiError(429, "throttled", "too many failed token checks from this address",
                           {"Retry-After": str(retry)})
        try:
            found = await self._tokens.authenticate(credentials.strip())
        except BaseException:  # the store failed, or the client left: no verdict on the token
            self._throttle.release(ticket, CheckResult.ABANDONED)
            raise
        self._throttle.release(ticket, CheckResult.SUCCESS if found is not None
                               else CheckResult.FAILURE)
        if found is None:
            raise ApiError(401, "invalid_token", "the token is unknown, revoked or expired", {
                "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
                                    'error_description="unknown, revoked or expired"'})
        return found


def require(token: ApiToken, scope: str) -> None:
    """RFC 6750 §3.1: 403 insufficient_scope, naming the scope needed."""
    assert scope in SCOPES, scope
    if scope not in token.scopes:
        raise ApiError(403, "insufficient_scope", f"this needs a token with scope {scope}", {
            "WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", '
                                f'scope="{scope}"'})


def make_routes(endpoints: Sequence[Endpoint], guard: Guard,
                extra: Sequence[BaseRoute] = ()) -> list[BaseRoute]:
    """One route per path answering every method, so a wrong method gets a JSON 405 with
    `Allow` (RFC 9110 §15.5.6) rather than Starlette's plain text."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint

    def dispatcher(methods: dict[str, Endpoint]) -> Callable[[Request], Awaitable[Response]]:
        async def dispatch(request: Request) -> Response:
            # HEAD is GET without the body (RFC 9110 §9.3.2; the server drops the body).
            endpoint = methods.get("GET" if request.method == "HEAD" else request.method)
            try:
                if endpoint is None:
                    raise ApiError(405, "method_not_allowed", f"{request.method} is not "
                                   "allowed here", {"Allow": ", ".join(_allowed(methods))})
                token = await guard.token(request)
                require(token, endpoint.scope)
                return await endpoint.handler(request, token)
            except ApiError as exc:
                return error_response(exc)
            except Exception as exc:
                known = translate(exc)
                if known is None:
                    raise
                return error_response(known)

        return dispatch

    routes: list[BaseRoute] = list(extra)
    routes += [Route(path, dispatcher(methods), methods=list(_METHODS))
               for path, methods in by_path.items()]
    return routes


def _allowed(methods: dict[str, Endpoint]) -> list[str]:
    return sorted({*methods, *(("HEAD",) if "GET" in methods else ())})
