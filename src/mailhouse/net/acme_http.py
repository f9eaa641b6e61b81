"""Answering the CA's challenges: the plain-HTTP listener of HTTP-01 (RFC 8555 §8.3) and the
`acme-tls/1` certificate of TLS-ALPN-01 (RFC 8737) on the public HTTPS listener.

HTTP-01: an ASGI app served by uvicorn (net/http.py) on `acme.http_listen`, plain HTTP. It
answers GET/HEAD `/.well-known/acme-challenge/<token>` with the key authorization of a pending
challenge and 404 for everything else: port 80 is not a web site here, and a redirect to https
would point at a listener that may be off (docs/decisions.md). The token is looked up, never
used in a path; h11 bounds the request head (16 KiB) and the body is never read.

TLS-ALPN-01: the ssl module selects ALPN from a fixed list and shows the server name only in
`sni_callback`, which runs before ALPN is chosen. So while a name has a pending challenge, a
handshake naming it is switched (in that callback) to a context holding only the challenge
certificate and offering only `acme-tls/1`. Outside the seconds a validation takes, the
callback does nothing and every handshake gets the server's certificate.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from mailhouse.service.acme_challenges import ACME_TLS_ALPN, MAX_TOKEN, ChallengeBoard

CHALLENGE_PREFIX: Final = "/.well-known/acme-challenge/"
MAX_PATH: Final = len(CHALLENGE_PREFIX) + MAX_TOKEN


def challenge_app(board: ChallengeBoard) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not spoken here
        status, body = answer(board, scope["method"], scope["path"])
        headers = [(b"content-type", b"text/plain; charset=us-ascii"),
                   (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    return app


def answer(board: ChallengeBoard, method: str, path: str) -> tuple[int, bytes]:
    """(status, body) for one request: pure, so it is tested without a socket."""
    if len(path) > MAX_PATH or not path.startswith(CHALLENGE_PREFIX):
        return 404, b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, b"method not allowed\n"
    key_authorization = board.http_answer(path[len(CHALLENGE_PREFIX):])
    if key_authorization is None:
        return 404, b"no such challenge\n"
    return 200, key_authorization.encode("ascii")


def install_alpn_responder(ctx: ssl.SSLContext, board: ChallengeBoard) -> None:
    """Make `ctx` answer TLS-ALPN-01 for the names `board` has challenges for."""
    def pick(sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
             _ctx: ssl.SSLContext) -> int | None:
        if server_name is None or not board.alpn_pending():
            return None
        pair = board.alpn_pair(server_name)
        if pair is not None:
            sslobj.context = _challenge_context(*pair)
        return None

    ctx.sni_callback = pick


def _challenge_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4: TLS 1.2 or later
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    # load_cert_chain takes files only: the pair goes through a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="mailhouse-alpn-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx
