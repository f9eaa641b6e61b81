"""`mailhouse doctor` end to end: a real store in tmp_path, the test DNS server as resolver, a
greeting server on loopback as the SMTP listener; the table, --json and the exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import mailhouse.__main__ as cli
import mailhouse.message.dkim as dkim_module
from mailhouse.cli_dns import dkim_keys
from mailhouse.cli_doctor import build_setup, register
from mailhouse.config import Config, config_from_table
from mailhouse.service.accounts import Accounts
from mailhouse.store import open_store
from tests.helpers.cli import Run, run_group
from tests.helpers.dns import DnsServer
from tests.test_doctor_dns import ADDRESS, DOMAIN, HOST, good_zones
from tests.test_doctor_host import FakeNtp, Greeter, write_cert

GIB = 1 << 30


@pytest.fixture(scope="module")
def one_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def fast_rsa_and_big_disk(monkeypatch: pytest.MonkeyPatch,
                          one_rsa_key: rsa.RSAPrivateKey) -> None:
    """One RSA key for the module; a disk with room, whatever the test machine's."""
    monkeypatch.setattr(dkim_module.rsa, "generate_private_key", lambda **_: one_rsa_key)
    block = 4096
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(
        (block, block, 100 * GIB // block, 50 * GIB // block, 50 * GIB // block, 1, 1, 1, 0,
         255)))


@pytest.fixture
def greeter() -> Iterator[Greeter]:
    server = Greeter(f"220 {HOST} ESMTP mailhouse\r\n".encode())
    yield server
    server.close()


@pytest.fixture
def world(tmp_path: Path, greeter: Greeter) -> Iterator[tuple[Config, DnsServer]]:
    now = time.time()
    cert = write_cert(tmp_path, names=[HOST], not_before=now - 86400,
                      not_after=now + 60 * 86400)
    key = tmp_path / "key.pem"
    key.write_text("unused by doctor")
    with DnsServer() as dns_server:
        config = config_from_table({
            "hostname": HOST, "data_dir": "data", "user": "root",
            "dns": {"nameservers": [dns_server.nameserver]},
            "tls": {"cert": str(cert), "key": str(key)},
            "listen": {"smtp": [f"127.0.0.1:{greeter.port}"], "submission": [],
                       "submissions": [], "imap": [], "imaps": [], "pop3": [], "pop3s": []},
        }, base_dir=tmp_path)

        async def add() -> None:
            store = open_store(config.data_dir)
            await store.open()
            try:
                await Accounts(store).add_domain(DOMAIN)
            finally:
                await store.close()

        asyncio.run(add())
        keys = dkim_keys(config).ensure(DOMAIN)
        for name, zone in good_zones(keys).items():
            for rdtype, values in zone.items():
                dns_server.set(name, rdtype, values)  # type: ignore[arg-type]
        yield config, dns_server


def mh(capsys: pytest.CaptureFixture[str], config: Config, *argv: str) -> Run:
    return run_group(register, capsys, config, *argv)


def test_a_healthy_server_exits_0_with_a_table(capsys: pytest.CaptureFixture[str],
                                               world: tuple[Config, DnsServer]) -> None:
    config, _ = world
    result = mh(capsys, config, "doctor")
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "FOUND"]
    rows = {line.split()[1] + " " + line.split()[2]: line.split()[0]
            for line in lines[1:] if line and line.split()[0] in ("OK", "WARN", "FAIL", "SKIP")
            and len(line.split()) > 2 and not line.split()[1].endswith(":")}
    assert rows[f"mx {DOMAIN}"] == "OK"
    assert rows[f"ptr {ADDRESS}"] == "OK"
    assert rows["smtp banner"] == "OK"
    assert "FAIL" not in rows.values()
    # Every result that is not ok is followed by its why and fix: here ports and clock.
    assert "SKIP ports: accepting here: smtp" in result.out
    assert "SKIP clock: no reference given" in result.out
    assert result.out.count("  why: ") == result.out.count("  fix: ") >= 2
    assert lines[-1].endswith("0 fail, 2 skip")


def test_json_lists_every_result_and_a_failure_exits_1(capsys: pytest.CaptureFixture[str],
                                                      world: tuple[Config, DnsServer]) -> None:
    config, dns_server = world
    dns_server.set(DOMAIN, "MX", [(10, "elsewhere.example.net")])
    result = mh(capsys, config, "doctor", "--json")
    assert result.code == 1
    results: list[dict[str, Any]] = json.loads(result.out)
    assert all(set(r) == {"name", "status", "found", "why_it_matters", "fix"} for r in results)
    mx = next(r for r in results if r["name"] == f"mx {DOMAIN}")
    assert mx["status"] == "fail" and mx["found"] == "10 elsewhere.example.net."
    assert mx["fix"] == f"publish: {DOMAIN}. 3600 IN MX 10 {HOST}."
    # "v=spf1 mx -all" no longer allows the server either: the MX is the one to fix.
    assert [r["name"] for r in results if r["status"] == "fail"] == [f"mx {DOMAIN}",
                                                                   f"spf {DOMAIN}"]


def test_domain_and_ip_options(capsys: pytest.CaptureFixture[str],
                               world: tuple[Config, DnsServer]) -> None:
    config, _ = world
    result = mh(capsys, config, "doctor", "--domain", "other.test")
    assert result.code == 1 and "other.test: not one of our domains" in result.err
    assert mh(capsys, config, "doctor", "--ip", "not-an-ip").code == 2
    result = mh(capsys, config, "doctor", "--json", "--domain", DOMAIN.upper(),
                "--ip", "192.0.2.99")
    names = {r["name"]: r for r in json.loads(result.out)}
    assert names["ptr 192.0.2.99"]["status"] == "fail"
    assert names[f"address {HOST}"]["status"] == "fail"  # 192.0.2.99 is not published
    assert f"ptr {ADDRESS}" not in names
    assert result.code == 1
    # The config's public_addresses stand where no --ip is given; --ip wins over them.
    configured = replace(config, public_addresses=("192.0.2.98",))
    names = {r["name"]: r for r in json.loads(mh(capsys, configured, "doctor", "--json").out)}
    assert "ptr 192.0.2.98" in names and f"ptr {ADDRESS}" not in names
    names = {r["name"]: r for r in json.loads(
        mh(capsys, configured, "doctor", "--json", "--ip", "192.0.2.99").out)}
    assert "ptr 192.0.2.99" in names and "ptr 192.0.2.98" not in names


def test_ntp_option_checks_the_clock(capsys: pytest.CaptureFixture[str],
                                     world: tuple[Config, DnsServer]) -> None:
    config, _ = world
    ntp = FakeNtp(time.time() - 600)  # the reference says we are ten minutes ahead
    try:
        result = mh(capsys, config, "doctor", "--json", "--ntp", f"127.0.0.1:{ntp.port}")
    finally:
        ntp.close()
    clock = next(r for r in json.loads(result.out) if r["name"] == "clock")
    assert clock["status"] == "fail" and clock["found"].startswith("+600.")
    assert result.code == 1
    assert mh(capsys, config, "doctor", "--ntp", "host:0").code == 2


def test_build_setup_uses_the_self_signed_certificate_when_none_is_configured(
        tmp_path: Path) -> None:
    config = config_from_table({"hostname": HOST, "data_dir": "data", "user": "root"},
                               base_dir=tmp_path)
    assert build_setup(config, []).cert_path is None
    (tmp_path / "data" / "tls").mkdir(parents=True)
    (tmp_path / "data" / "tls" / "selfsigned-cert.pem").write_text("x")
    setup = build_setup(config, [])
    assert setup.cert_path == tmp_path / "data" / "tls" / "selfsigned-cert.pem"
    assert [(entry.kind, entry.port) for entry in setup.listeners][:2] == [("smtp", 25),
                                                                          ("submission", 587)]


def test_doctor_is_a_mailhouse_command() -> None:
    args = cli.build_parser().parse_args(["doctor", "--json", "--config", "x.toml"])
    assert args.json and args.config == "x.toml" and callable(args.handler)
