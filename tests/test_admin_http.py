"""The admin HTTPS listener (net/http.py) and its health endpoints (web/health.py): the ASGI
app in process, then the real server answering over TLS, going not-ready as it stops."""

from __future__ import annotations

import asyncio
import http.client
import imaplib
import json
import smtplib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mailhouse import metrics
from mailhouse.config import load_config
from mailhouse.errors import ConfigError
from mailhouse.web.health import Check, build_app
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_port


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.body = status, headers, body

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Client:
    """Calls the ASGI app as a server would (one HTTP request scope), without sockets."""

    def __init__(self, checks: Mapping[str, Check]) -> None:
        async def readiness() -> Mapping[str, Check]:
            return checks

        self.app = build_app(readiness)

    def request(self, method: str, path: str) -> Response:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "https", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"localhost")],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 443)}
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        asyncio.run(self.app(scope, receive, send))  # type: ignore[arg-type]
        start = sent[0]
        headers = {k.decode(): v.decode()
                   for k, v in start["headers"]}  # type: ignore[attr-defined]
        body = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
        return Response(start["status"], headers, body)  # type: ignore[arg-type]

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def head(self, path: str) -> Response:
        return self.request("HEAD", path)

    def post(self, path: str) -> Response:
        return self.request("POST", path)


def client(checks: Mapping[str, Check]) -> Client:
    return Client(checks)


def test_live_and_ready() -> None:
    ok = client({"store": Check(True, "answers"), "listeners": Check(True, "accepting")})
    live = ok.get("/healthz/live")
    assert (live.status_code, live.json()) == (200, {"status": "live"})
    assert live.headers["cache-control"] == "no-store"
    ready = ok.get("/healthz/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["store"] == {"ok": True, "detail": "answers"}
    assert ok.head("/healthz/ready").status_code == 200


def test_not_ready_says_why() -> None:
    failing = client({"store": Check(False, "OperationalError: disk I/O error"),
                      "listeners": Check(True, "accepting")})
    ready = failing.get("/healthz/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert ready.json()["checks"]["store"]["detail"] == "OperationalError: disk I/O error"
    assert failing.get("/healthz/live").status_code == 200  # busy or broken is not dead


def test_only_what_exists() -> None:
    app = client({})
    assert app.get("/").status_code == 404
    assert app.get("/healthz").status_code == 404
    assert app.post("/healthz/ready").status_code == 405


def test_the_listen_key_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "mailhouse.toml"
    path.write_text('[admin]\nlisten = ["not an endpoint"]\n')
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        load_config(path)
    path.write_text("")
    assert load_config(path).admin.listen == ()  # off unless asked for


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_server_answers_health_probes_over_tls(tmp_path: Path) -> None:
    port = free_port()
    server = MailhouseServer(tmp_path / "mh", protocols=("smtp", "imaps"),
                             extra_toml=f'[admin]\nlisten = ["127.0.0.1:{port}"]')
    server.start()
    try:
        assert get(port, "/healthz/live") == (200, {"status": "live"})
        status, body = get(port, "/healthz/ready")
        assert status == 200, body
        checks = body["checks"]
        assert isinstance(checks, dict)
        assert set(checks) == {"listeners", "store", "queue"}
        assert all(c["ok"] for c in checks.values())
        assert f"https://127.0.0.1:{port}/healthz/ready" in server.log_path.read_text()
    finally:
        server.close()


def get_text(port: int, path: str) -> tuple[int, str, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read().decode()
    finally:
        conn.close()


def sample(text: str, name: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_add_up_every_process(tmp_path: Path) -> None:
    port = free_port()
    server = MailhouseServer(
        tmp_path / "mh", protocols=("smtp", "imaps"),
        extra_toml=f'[admin]\nlisten = ["127.0.0.1:{port}"]\n[imap]\nworkers = 2')
    server.add_domain("example.org")
    server.add_user("alice@example.org", "correct horse battery")
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
            smtp.sendmail("bob@example.net", ["alice@example.org"],
                          b"From: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        for password in ("correct horse battery", "wrong"):  # in an IMAP worker process
            imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context,
                                     timeout=10)
            try:
                imap.login("alice@example.org", password)
                imap.select("INBOX")
                imap.logout()
            except imaplib.IMAP4.error:
                imap.shutdown()
        status, kind, text = get_text(port, "/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        assert sample(text, 'mailhouse_smtp_messages_total{service="smtp"}') == 1
        assert sample(text, 'mailhouse_connections_total{service="smtp"}') >= 1
        assert sample(text, 'mailhouse_connections_total{service="imap"}') >= 2  # imap+imaps
        assert sample(text, 'mailhouse_logins_total{result="ok",service="imap"}') == 1
        assert sample(text, 'mailhouse_logins_total{result="failed",service="imap"}') == 1
        assert sample(text, 'mailhouse_imap_commands_total{command="SELECT"}') == 1
        assert sample(text, "mailhouse_store_commit_jobs_count") >= 1
        # latencies: the 250's wait for the fsync, commits, IMAP commands (in a worker)
        assert sample(text, 'mailhouse_smtp_accept_seconds_count{service="smtp"}') == 1
        assert sample(text, "mailhouse_store_commit_seconds_count") >= 1
        assert sample(text, 'mailhouse_imap_command_seconds_count{command="SELECT"}') == 1
        assert "mailhouse_queue_messages 0.0" in text  # read from the store at the scrape
        assert "mailhouse_queue_oldest_age_seconds 0.0" in text
        assert (server.data_dir / "run" / "metrics").is_dir()
    finally:
        server.close()


def test_queue_gauges_in_the_exposition() -> None:
    text = metrics.render(metrics.QueueNow(2, 3, 42.5)).decode()
    assert "mailhouse_queue_messages 2.0" in text
    assert "mailhouse_queue_recipients 3.0" in text
    assert "mailhouse_queue_oldest_age_seconds 42.5" in text
