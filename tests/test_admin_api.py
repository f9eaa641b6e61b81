"""The admin API in the real server (`[admin] listen`), over TLS: a token made with the CLI,
used with curl's kind of request (urllib-free http.client), refused without one, throttled
past the failure limit, and a change made through it recorded in the audit log as the
operator's. tests/test_admin_api_endpoints.py covers every endpoint in process."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any

from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_port


def call(port: int, method: str, path: str, token: str | None = None,
         body: Any = None) -> tuple[int, dict[str, str], Any]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, "/api/v1" + path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        kind = response.headers.get("content-type", "")
        return (response.status, {k.lower(): v for k, v in response.headers.items()},
                json.loads(raw) if raw and kind.startswith("application/json") else raw)
    finally:
        conn.close()


def test_the_api_in_the_running_server(tmp_path: Path) -> None:
    port = free_port()
    server = MailhouseServer(tmp_path / "mh", protocols=("smtp",),
                             extra_toml=f'[admin]\nlisten = ["127.0.0.1:{port}"]\n'
                                        "[submission]\nauth_failure_limit = 3")
    server.cli("operator", "add", "ann", "--password-stdin", stdin=b"a long password\n")
    token = server.cli("operator", "token", "add", "ann", "--scope", "read", "--scope",
                       "accounts", "--scope", "audit").stdout.decode().strip()
    server.start()
    try:
        status, headers, body = call(port, "GET", "/domains")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        status, _, body = call(port, "POST", "/domains", token, {"name": "example.org"})
        assert status == 201, body
        assert any(" IN MX " in line for line in body["records"])
        status, _, body = call(port, "GET", "/audit", token)
        assert status == 200
        assert (body[0]["actor"], body[0]["action"], body[0]["detail"]) == (
            "operator:ann", "domain.add", "example.org")
        status, _, body = call(port, "GET", "/certificate", token)
        assert status == 200 and body["self_signed"] is True
        status, _, body = call(port, "GET", "/openapi.json")
        assert status == 200 and body["openapi"] == "3.1.0"
        for _ in range(3):
            assert call(port, "GET", "/domains", "mh_" + "x" * 43)[0] == 401
        status, headers, body = call(port, "GET", "/domains", token)
        assert status == 429 and int(headers["retry-after"]) > 0, body
    finally:
        server.close()
