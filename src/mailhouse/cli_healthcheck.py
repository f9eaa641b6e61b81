"""`mailhouse healthcheck`: is the running server ready? For a container's HEALTHCHECK and
any supervisor that probes with a command rather than HTTP.

It asks `/healthz/ready` on the admin listener (`[admin] listen`; a wildcard address is asked
on loopback) and exits 0 when ready, 1 when not (the failing checks printed) or when nothing
answers, 2 when the config has no admin listener. Standard library only, so a slim image needs
nothing more than mailhouse itself.

Trust: the probe talks to its own server on loopback, where no name a certificate carries
applies, so the certificate is pinned instead of verified by name: the listener must present
the very certificate `serve` loads (the configured, ACME or self-signed file). Anything else
answering on that port fails the probe.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error, out
from mailhouse.config import Config
from mailhouse.service.cert_info import presented_certificate

TIMEOUT: Final = 5.0  # seconds for the whole probe's connection and each read
MAX_BODY: Final = 65536  # octets of the readiness answer read
WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    probe = subparsers.add_parser(
        "healthcheck", parents=list(parents),
        help="exit 0 when the running server is ready (for HEALTHCHECK and probes)")
    probe.set_defaults(handler=healthcheck)


def healthcheck(args: argparse.Namespace, config: Config) -> int:
    endpoints = config.admin.endpoints()
    if not endpoints:
        error('healthcheck: no admin listener in the config; add [admin] listen = '
              '["127.0.0.1:8443"] (the probe asks its /healthz/ready)')
        return EXIT_USAGE
    host, port = endpoints[0]
    host = WILDCARDS.get(host, host)
    _, cert_path = presented_certificate(config)
    try:
        status, body = probe(host, port, cert_path)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        error(f"healthcheck: https://{_netloc(host, port)}/healthz/ready: {exc}")
        return EXIT_FAILED
    if status == 200:
        out("ready")
        return EXIT_OK
    out(f"not ready (HTTP {status})")
    try:
        checks = json.loads(body).get("checks", {})
    except (ValueError, AttributeError):
        checks = {}
    for name, check in sorted(checks.items()) if isinstance(checks, dict) else ():
        if isinstance(check, dict) and not check.get("ok"):
            out(f"  {name}: {check.get('detail', '')}")
    return EXIT_FAILED


def probe(host: str, port: int, pinned: Path | None) -> tuple[int, bytes]:
    """GET /healthz/ready; ssl.SSLError when the listener presents another certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned below instead: see the module doc
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=TIMEOUT)
    try:
        conn.connect()
        if pinned is not None:
            presented = conn.sock.getpeercert(binary_form=True)
            expected = x509.load_pem_x509_certificates(pinned.read_bytes())[0]
            if presented != expected.public_bytes(Encoding.DER):
                raise ssl.SSLError(f"the listener does not present {pinned}")
        conn.request("GET", "/healthz/ready", headers={"Host": _netloc(host, port)})
        response = conn.getresponse()
        return response.status, response.read(MAX_BODY)
    finally:
        conn.close()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
