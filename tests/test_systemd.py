"""systemd: the readiness protocol (sdnotify.py) with the real server, and the unit file in
packaging/ (every hardening option it promises; `systemd-analyze verify` where installed)."""

from __future__ import annotations

import asyncio
import configparser
import logging
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


def test_watchdog_pings_while_the_server_is_healthy(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    server = MailhouseServer(tmp_path / "mh", env={"NOTIFY_SOCKET": path,
                                                   "WATCHDOG_USEC": "1000000"})
    server.start()
    try:
        assert sock.recv(4096).decode().startswith("READY=1\n")
        sock.settimeout(5)
        assert [sock.recv(100) for _ in range(3)] == [b"WATCHDOG=1"] * 3  # every 0.5 s
    finally:
        server.close()


def _claim(monkeypatch: pytest.MonkeyPatch, path: str, **env: str) -> float | None:
    monkeypatch.setattr(sdnotify, "_claimed", False)
    monkeypatch.setattr(sdnotify, "_address", None)
    monkeypatch.setattr(sdnotify, "_watchdog", None)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
        if name in env:
            monkeypatch.setenv(name, env[name])
    interval = sdnotify.watchdog_interval()
    assert "WATCHDOG_USEC" not in os.environ and "WATCHDOG_PID" not in os.environ
    return interval


def test_watchdog_only_when_meant_for_this_process(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture,
                                                  tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    assert _claim(monkeypatch, path) is None
    assert _claim(monkeypatch, path, WATCHDOG_USEC="60000000") == 30.0
    assert _claim(monkeypatch, path, WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid())) \
        == 30.0
    assert _claim(monkeypatch, path, WATCHDOG_USEC="60000000", WATCHDOG_PID="1") is None
    for bad in ("0", "-5", "1e6", "\u00b2", ""):
        assert _claim(monkeypatch, path, WATCHDOG_USEC=bad) is None, bad
    assert "event=sdnotify.bad_watchdog_usec" in caplog.text


def test_no_ping_while_a_health_check_fails(monkeypatch: pytest.MonkeyPatch,
                                           notify_socket: tuple[socket.socket, str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    from mailhouse.app import watchdog_pings
    from mailhouse.web.health import Check

    sock, path = notify_socket
    sock.settimeout(0.5)
    monkeypatch.setattr(sdnotify, "_claimed", True)
    monkeypatch.setattr(sdnotify, "_address", path)
    bad, good = {"store": Check(False, "no answer")}, {"store": Check(True, "answers")}
    answers = [bad, bad, good, bad, good]
    done = asyncio.Event()

    async def readiness() -> dict[str, Check]:
        if len(answers) == 1:
            done.set()
        if not answers:
            raise RuntimeError("asked once too often")
        return answers.pop(0)

    async def main() -> None:
        task = asyncio.create_task(watchdog_pings(readiness, 0.01))
        await done.wait()
        await asyncio.sleep(0.005)  # the last answer's ping goes out
        task.cancel()

    with caplog.at_level(logging.INFO, logger="mailhouse"):
        asyncio.run(main())
    assert [sock.recv(100) for _ in range(2)] == [b"WATCHDOG=1"] * 2  # one per good answer
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(100)
    assert caplog.text.count("event=watchdog.unhealthy failing=store") == 2  # per change
    assert caplog.text.count("event=watchdog.healthy") == 2


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
                       "RestartPreventExitStatus": "2", "StateDirectory": "mailhouse",
                       "WatchdogSec": "60s", "Restart": "on-failure"}.items():
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
