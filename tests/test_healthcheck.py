"""`mailhouse healthcheck` (cli_healthcheck.py): the container HEALTHCHECK's probe — ready,
not ready (and why), nothing answering, another certificate answering, no admin listener."""

from __future__ import annotations

import argparse
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from mailhouse.cli_healthcheck import healthcheck
from mailhouse.config import Config, load_config
from mailhouse.net.tls import ensure_self_signed
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_port

NOT_READY = {"status": "not ready", "checks": {
    "store": {"ok": False, "detail": "no answer within 2 s"},
    "listeners": {"ok": True, "detail": "all accepting"}}}


def test_against_the_running_server(tmp_path: Path) -> None:
    port = free_port()
    server = MailhouseServer(tmp_path / "mh", protocols=("smtp",),
                             extra_toml=f'[admin]\nlisten = ["0.0.0.0:{port}"]')
    server.start()
    try:
        ready = server.cli("healthcheck")
        assert ready.returncode == 0 and ready.stdout == b"ready\n"
    finally:
        server.close()
    gone = server.cli("healthcheck", check=False)
    assert gone.returncode == 1 and b"/healthz/ready" in gone.stderr


def config(tmp_path: Path, admin: str) -> Config:
    path = tmp_path / "mailhouse.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n{admin}')
    return load_config(path)


@contextmanager
def fake_admin(cert: Path, key: Path, status: int, body: bytes) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_not_ready_prints_the_failing_checks(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = ensure_self_signed(tmp_path / "data" / "tls", "mx.example.test")
    with fake_admin(cert, key, 503, json.dumps(NOT_READY).encode()) as port:
        code = healthcheck(argparse.Namespace(),
                           config(tmp_path, f'[admin]\nlisten = ["127.0.0.1:{port}"]\n'))
    shown = capsys.readouterr().out
    assert code == 1 and "not ready (HTTP 503)" in shown
    assert "store: no answer within 2 s" in shown and "listeners" not in shown


def test_another_certificate_fails_the_probe(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ensure_self_signed(tmp_path / "data" / "tls", "mx.example.test")  # what serve loads
    impostor = trustme.CA().issue_cert("mx.example.test")
    cert, key = tmp_path / "other.pem", tmp_path / "other-key.pem"
    impostor.cert_chain_pems[0].write_to_path(str(cert))
    impostor.private_key_pem.write_to_path(str(key))
    with fake_admin(cert, key, 200, b'{"status": "ready"}') as port:
        code = healthcheck(argparse.Namespace(),
                           config(tmp_path, f'[admin]\nlisten = ["127.0.0.1:{port}"]\n'))
    assert code == 1 and "does not present" in capsys.readouterr().err


def test_no_admin_listener_is_a_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck(argparse.Namespace(), config(tmp_path, "")) == 2
    assert "[admin] listen" in capsys.readouterr().err
