"""`mailhouse doctor` against a real running server (a subprocess on loopback), with the test
DNS server publishing exactly what `mailhouse dns-records` printed: the operator's path from
"publish these" to "all checks pass"."""

from __future__ import annotations

import json
from pathlib import Path

import dns.rdatatype

from mailhouse.service.doctor_dns import parse_records
from tests.helpers.dns import DnsServer
from tests.helpers.mailhouse import MailhouseServer

HOST = "mx.example.test"
DOMAIN = "example.test"


def publish(dns_server: DnsServer, printed: str) -> None:
    """Serve the records `dns-records` printed, as an operator pastes them into the zone."""
    for rrset in parse_records(printed.splitlines()):
        name = rrset.name.to_text()
        if rrset.rdtype == dns.rdatatype.TXT:  # keep the character-strings as printed
            dns_server.set(name, "TXT", [tuple(part.decode() for part in rdata.strings)
                                         for rdata in rrset])
        else:
            dns_server.set(name, rrset.rdtype.name, [rdata.to_text() for rdata in rrset])


def test_doctor_passes_once_the_printed_records_are_published(tmp_path: Path) -> None:
    with DnsServer({HOST: {"A": ["127.0.0.1"]},
                    "1.0.0.127.in-addr.arpa": {"PTR": [HOST]}}) as dns_server, \
            MailhouseServer(tmp_path, protocols=("smtp", "imaps"), hostname=HOST,
                            extra_toml=f'[dns]\nnameservers = ["{dns_server.nameserver}"]'
                            ) as server:
        server.add_domain(DOMAIN)

        before = server.cli("doctor", "--json", check=False)
        assert before.returncode == 1  # nothing published yet
        failed = {r["name"] for r in json.loads(before.stdout) if r["status"] == "fail"}
        assert {f"mx {DOMAIN}", f"spf {DOMAIN}", f"dmarc {DOMAIN}"} <= failed

        publish(dns_server, server.cli("dns-records", DOMAIN).stdout.decode())
        after = server.cli("doctor", "--json", "--ip", "127.0.0.1", check=False)
        results = {r["name"]: r for r in json.loads(after.stdout)}
        statuses = {name: r["status"] for name, r in results.items()}
        for name in (f"address {HOST}", f"mx {DOMAIN}", f"spf {DOMAIN}", f"dmarc {DOMAIN}",
                     f"client records {DOMAIN}", "ptr 127.0.0.1", "smtp banner", "queue age"):
            assert statuses[name] == "ok", results[name]
        assert [s for name, s in statuses.items() if name.startswith("dkim ")] == ["ok", "ok"]
        # MTA-STS is not printed by dns-records (no policy is served yet): a warning, as is
        # the real server's own self-signed certificate; TLS-RPT is printed, so it is ok.
        assert statuses[f"mta-sts {DOMAIN}"] == "warn"
        assert statuses[f"tls-rpt {DOMAIN}"] == "ok"
        assert statuses["certificate"] == "warn" and "self-signed" in results["certificate"][
            "found"]
        assert statuses["ports"] == "skip"
        assert f"smtp {server.port('smtp')}, imaps {server.port('imaps')}" in results[
            "ports"]["found"]
        # The disk of the test machine decides the last one.
        assert after.returncode == (1 if "fail" in statuses.values() else 0)
        assert set(statuses.values()) - {"fail"} <= {"ok", "warn", "skip"}
        if after.returncode:
            assert [n for n, s in statuses.items() if s == "fail"] == ["disk"]
