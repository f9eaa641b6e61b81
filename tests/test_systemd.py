"""systemd: the readiness protocol (sdnotify.py) with the real server, and the unit file in
packaging/ (every hardening option it promises; `systemd-analyze verify` where installed)."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailhouse import sdnotify
from tests.helpers.mailhouse import MailhouseServer
from tests.test_queue_process import queue_child, wait_ready

UNIT = Path(__file__).resolve().parents[1] / "packaging" / "mailhouse.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield sock, path
    finally:
        sock.close()


def test_ready_once_listening_and_stopping_on_sigterm(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    server = MailhouseServer(tmp_path / "mh", env={"NOTIFY_SOCKET": path})
    server.start()
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n") and "STATUS=serving mail for" in ready
        with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10) as smtp:
            assert smtp.recv(100).startswith(b"220 ")  # ready meant accepting
        wait_ready(server, 1)
        child = queue_child(server)
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"NOTIFY_SOCKET=") for e in environ)  # not the child's
        server.stop()
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        server.close()


def test_notify_without_a_socket_does_nothing(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    for value in (None, "", "relative/path", str(tmp_path / "nobody-listens")):
        monkeypatch.setattr(sdnotify, "_claimed", False)
        monkeypatch.setattr(sdnotify, "_address", None)
        if value is None:
            monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        else:
            monkeypatch.setenv("NOTIFY_SOCKET", value)
        assert sdnotify.notify("READY=1") is False  # and never raises
        assert "NOTIFY_SOCKET" not in os.environ


def test_an_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mailhouse-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setattr(sdnotify, "_claimed", False)
        monkeypatch.setattr(sdnotify, "_address", None)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STATUS=x") is True
        assert sock.recv(100) == b"STATUS=x"


def test_the_unit_file_promises_what_operations_md_says() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["User"] == "mailhouse" and service["ExecStart"].endswith("mailhouse serve")
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == \
        "CAP_NET_BIND_SERVICE"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "RestrictSUIDSGID": "yes", "UMask": "0077",
                       "RestartPreventExitStatus": "2", "StateDirectory": "mailhouse"}.items():
        assert service[key] == value, key
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify wants ExecStart's program to exist: point it at this interpreter.
    text = UNIT.read_text().replace("/usr/local/bin/mailhouse serve",
                                    f"{sys.executable} -m mailhouse serve")
    copy = tmp_path / "mailhouse.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
