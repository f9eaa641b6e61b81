"""The public HTTPS face: what mail clients fetch to configure themselves (issue 9 §3) —
and the MTA-STS policy sending servers fetch (service/mta_sts.py, `mta-sts.DOMAIN`) —
Thunderbird's autoconfig (`autoconfig.DOMAIN` and the domain's `/.well-known/` path),
Microsoft Autodiscover (POX and JSON v2, `autodiscover.DOMAIN`) and the Apple profile. The
documents are service/autoconfig.py's; this only turns HTTP into its requests and back,
bounding the body before reading it whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailhouse.config import Config
from mailhouse.service import autoconfig, mta_sts
from mailhouse.service.profile_signing import ProfileSigner

NO_STORE = {"Cache-Control": "no-store"}
# RFC 8461 §3.3: senders cache by max_age, not by HTTP; an hour keeps intermediaries honest.
POLICY_CACHE = {"Cache-Control": "max-age=3600"}


def build_app(config: Config, hosted: Callable[[], Collection[str]],
              served: Collection[str], signer: ProfileSigner | None = None) -> Starlette:
    """`hosted`: the domains the store serves now (the directory cache); `served`: the
    listener kinds this server answers on (what clients are offered); `signer`: signs the
    Apple profile with the server's certificate (unsigned without one)."""

    async def answer(request: Request) -> Response:
        path = request.url.path
        if request.method in ("GET", "HEAD") and mta_sts.policy_domain(
                request.headers.get("host", ""), path, frozenset(hosted())) is not None:
            return Response(mta_sts.policy(config), 200, media_type=mta_sts.CONTENT_TYPE,
                            headers=POLICY_CACHE)
        if not autoconfig.handles(path):
            return Response(b"not found\n", 404, media_type="text/plain", headers=NO_STORE)
        body = b""
        if request.method == "POST":
            declared = request.headers.get("content-length")
            if declared is not None and (not (declared.isascii() and declared.isdigit())
                                         or int(declared) > autoconfig.MAX_POX_BODY):
                return Response(b"request too large\n", 413, media_type="text/plain")
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > autoconfig.MAX_POX_BODY:  # chunked bodies are bounded here
                    return Response(b"request too large\n", 413, media_type="text/plain")
                chunks.append(chunk)
            body = b"".join(chunks)
        result = autoconfig.handle(
            autoconfig.Request(request.method, path, request.url.query, body,
                               request.headers.get("host", "")),
            config, hosted(), served=served)
        headers = dict(NO_STORE)
        body = result.body
        if result.status == 200 and path.lower() == autoconfig.MOBILECONFIG:
            headers["Content-Disposition"] = 'attachment; filename="mailhouse.mobileconfig"'
            if signer is not None:  # a signature is CPU work: not on the event loop
                body = await asyncio.to_thread(signer.sign, body)
        return Response(body, result.status, media_type=result.content_type,
                        headers=headers)

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST", "HEAD"])])
