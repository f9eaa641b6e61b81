"""`mailhouse dns-records` and the `domain add` key hook, against a real store in tmp_path."""

from __future__ import annotations

import argparse
import asyncio
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import example, given
from hypothesis import strategies as st

import mailhouse.message.dkim as dkim_module
from mailhouse.cli_dns import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    dkim_keys,
    on_domain_added,
    register,
)
from mailhouse.config import Config, config_from_table
from mailhouse.service.accounts import Accounts
from mailhouse.store import open_store


@pytest.fixture(scope="module")
def one_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def fast_rsa(monkeypatch: pytest.MonkeyPatch, one_rsa_key: rsa.RSAPrivateKey) -> None:
    """One RSA key for the whole module: key generation is not what is tested here."""
    monkeypatch.setattr(dkim_module.rsa, "generate_private_key", lambda **_: one_rsa_key)


def make_config(tmp_path: Path, **extra: object) -> Config:
    # user = "root": run as root, the commands stay root (never switch this test process).
    table: dict[str, object] = {"hostname": "mx.example.test", "data_dir": "data",
                                "user": "root", **extra}
    return config_from_table(table, base_dir=tmp_path)


def add_domain(config: Config, name: str) -> None:
    async def run() -> None:
        store = open_store(config.data_dir)
        await store.open()
        try:
            await Accounts(store).add_domain(name)
        finally:
            await store.close()

    asyncio.run(run())


def run_cli(config: Config, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mailhouse")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.handler(args, config)
    return code


def test_dns_records_prints_every_record_and_makes_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    add_domain(config, "example.test")
    assert dkim_keys(config).keys("example.test") == []  # a domain from before DKIM

    assert run_cli(config, "dns-records", "Example.TEST") == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("; ")
    records = lines[1:]
    assert records[0] == "example.test. IN MX 10 mx.example.test."
    assert 'example.test. IN TXT "v=spf1 mx -all"' in records
    assert sum("._domainkey.example.test. IN TXT" in line for line in records) == 2
    assert any(line.startswith("_dmarc.example.test. IN TXT") for line in records)
    assert "_submissions._tcp.example.test. IN SRV 0 1 465 mx.example.test." in records
    assert records[-2:] == ["autoconfig.example.test. IN CNAME mx.example.test.",
                            "autodiscover.example.test. IN CNAME mx.example.test."]

    keys = dkim_keys(config).keys("example.test")
    assert [k.key_type for k in keys] == ["rsa", "ed25519"]
    assert stat.S_IMODE((config.data_dir / "dkim").stat().st_mode) == 0o700
    # Printing again shows the same keys.
    assert run_cli(config, "dns-records", "example.test") == EXIT_OK
    assert capsys.readouterr().out == out


def test_dns_records_advertise_imap_and_pop3_as_served(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Production defaults: every listener, so clients find IMAP (RFC 6186 §3, implicit TLS
    # first, RFC 8314 §3), POP3 after it, each on its standard port.
    config = make_config(tmp_path)
    add_domain(config, "example.test")
    assert run_cli(config, "dns-records", "example.test") == EXIT_OK
    records = capsys.readouterr().out.splitlines()
    srv = [line for line in records if " IN SRV " in line]
    assert srv == [
        "_submissions._tcp.example.test. IN SRV 0 1 465 mx.example.test.",
        "_submission._tcp.example.test. IN SRV 10 1 587 mx.example.test.",
        "_imaps._tcp.example.test. IN SRV 0 1 993 mx.example.test.",
        "_imap._tcp.example.test. IN SRV 10 1 143 mx.example.test.",
        "_pop3s._tcp.example.test. IN SRV 20 1 995 mx.example.test.",
        "_pop3._tcp.example.test. IN SRV 30 1 110 mx.example.test.",
    ]


def test_dns_records_mark_services_without_a_listener_not_available(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # RFC 6186 §4: a service the domain does not offer is published with the target ".".
    config = make_config(tmp_path, listen={"imap": [], "pop3": [], "pop3s": []})
    add_domain(config, "example.test")
    assert run_cli(config, "dns-records", "example.test") == EXIT_OK
    records = capsys.readouterr().out.splitlines()
    assert "_imaps._tcp.example.test. IN SRV 0 1 993 mx.example.test." in records
    assert "_imap._tcp.example.test. IN SRV 0 0 0 ." in records
    assert "_pop3s._tcp.example.test. IN SRV 0 0 0 ." in records
    assert "_pop3._tcp.example.test. IN SRV 0 0 0 ." in records
    assert "_submission._tcp.example.test. IN SRV 10 1 587 mx.example.test." in records


def test_dns_records_refuses_a_domain_we_do_not_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    add_domain(config, "example.test")
    assert run_cli(config, "dns-records", "other.test") == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("mailhouse: other.test is not one of our domains (add it with "
                   "`mailhouse domain add other.test`)\n")
    assert not (config.data_dir / "dkim" / "other.test").exists()

    assert run_cli(config, "dns-records", "not a domain!") == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("mailhouse: ") and "Traceback" not in err


def test_dns_records_warns_about_localhost_and_disabled_dkim(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, hostname="localhost", dkim={"enabled": False})
    add_domain(config, "example.test")
    assert run_cli(config, "dns-records", "example.test") == EXIT_OK
    out, err = capsys.readouterr()
    assert "example.test. IN MX 10 localhost." in out
    assert "hostname is 'localhost'" in err
    assert "dkim.enabled = false" in err


def test_dns_records_reports_an_unwritable_key_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    add_domain(config, "example.test")
    (config.data_dir / "dkim").write_text("a file where the directory should be")
    assert run_cli(config, "dns-records", "example.test") == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("mailhouse: ") and "dkim" in err and "Traceback" not in err


def test_on_domain_added_makes_keys_once(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    add_domain(config, "example.test")
    on_domain_added(config, "example.test")
    out, err = capsys.readouterr()
    assert err == ""
    keys = dkim_keys(config).keys("example.test")
    assert [k.key_type for k in keys] == ["rsa", "ed25519"]
    for key in keys:
        assert key.selector in out
    assert "mailhouse dns-records example.test" in out
    records = [k.record() for k in keys]
    on_domain_added(config, "example.test")  # `domain add` is idempotent, and so is this
    assert [k.record() for k in dkim_keys(config).keys("example.test")] == records


def test_on_domain_added_never_fails_the_command(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    config.data_dir.mkdir()
    (config.data_dir / "dkim").write_text("in the way")
    on_domain_added(config, "example.test")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("mailhouse: warning: could not make DKIM keys for example.test: ")
    assert "`mailhouse dns-records example.test` tries again" in err


def test_zone_fragment_parses_back_to_the_printed_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # RFC 1035 §5: absolute owners, a TTL, class IN, TXT strings of at most 255 octets; read
    # back by dnspython it holds exactly the records the plain listing prints.
    import dns.rdataclass
    import dns.zone

    from mailhouse.service.doctor_dns import ZONE_TTL, parse_records

    config = make_config(tmp_path, listen={"pop3": []})
    add_domain(config, "example.test")
    assert run_cli(config, "dns-records", "example.test") == EXIT_OK
    plain = capsys.readouterr().out.splitlines()
    assert run_cli(config, "dns-records", "--zone", "example.test") == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("; zone fragment for example.test")
    assert all(line.split()[0].endswith(".") and line.split()[1:3] == [str(ZONE_TTL), "IN"]
               for line in lines[1:])
    zone = dns.zone.from_text(out, origin="example.test.", relativize=False,
                              check_origin=False)
    parsed = {(name, rdataset.rdtype): rdataset for name, rdataset in zone.iterate_rdatasets()}
    expected = parse_records(plain)
    assert len(parsed) == len(expected)
    for rrset in expected:
        rdataset = parsed[(rrset.name, rrset.rdtype)]
        assert rdataset.ttl == ZONE_TTL and rdataset.rdclass == dns.rdataclass.IN
        assert set(rdataset) == set(rrset)
    txt = [rdata for rdataset in parsed.values() for rdata in rdataset
           if hasattr(rdata, "strings")]
    assert any(len(rdata.strings) > 1 for rdata in txt)  # the RSA key is split …
    assert all(len(part) <= 255 for rdata in txt for part in rdata.strings)  # … at 255 octets
    assert "_pop3._tcp.example.test. 3600 IN SRV 0 0 0 ." in lines



@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=700))
@example("x" * 256)
@example('"\\' * 200)
def test_zone_fragment_round_trips_any_txt_value(value: str) -> None:
    # A TXT value as dns_records prints it (quoted strings of at most 255 octets) comes back
    # from the zone fragment whole.
    import dns.zone

    from mailhouse.service.doctor_dns import parse_records, txt_value, zone_fragment

    data = value.encode("ascii")
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'
                      for c in chunks)
    rrsets = parse_records([f"x.example.test. IN TXT {quoted}"])
    text = "\n".join(zone_fragment(rrsets))
    zone = dns.zone.from_text(text, origin="example.test.", relativize=False,
                              check_origin=False)
    (_, rdataset), = list(zone.iterate_rdatasets())
    assert txt_value(next(iter(rdataset))) == value
