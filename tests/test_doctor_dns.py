"""The DNS checks of `mailhouse doctor` (service/doctor.py) against the test DNS server on
loopback: every check ok with the records `dns-records` prints, and each way it fails."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.message.dkim import DkimKey, DkimKeys, dns_records
from mailhouse.service.doctor import CheckResult, Doctor, DoctorSetup, Status, _dkim_tags
from mailhouse.service.doctor_dns import (
    SPF_MAX_LOOKUPS,
    DnsLookups,
    make_resolver,
    parse_records,
    spf_terms,
)
from tests.helpers.dns import SERVFAIL, TIMEOUT, DnsServer

T = TypeVar("T")
HOST = "mx.example.test"
DOMAIN = "example.test"
ADDRESS = "192.0.2.10"
ADDRESS6 = "2001:db8::10"
PTR4 = "10.2.0.192.in-addr.arpa"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[DkimKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.MonkeyPatch.context() as patch:  # one RSA key: generation is not tested here
        patch.setattr(rsa, "generate_private_key", lambda **_: key)
        return DkimKeys(tmp_path_factory.mktemp("dkim")).ensure(DOMAIN)


STS_ID = "0123456789abcdef0123"  # the id of the policy the server serves in these tests


def good_zones(keys: list[DkimKey]) -> dict[str, dict[str, object]]:
    zones: dict[str, dict[str, object]] = {
        DOMAIN: {"MX": [(10, HOST)], "TXT": ["v=spf1 mx -all", "google-site-verification=x"]},
        HOST: {"A": [ADDRESS], "AAAA": [ADDRESS6]},
        f"_dmarc.{DOMAIN}": {"TXT": [f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{DOMAIN}"]},
        f"_mta-sts.{DOMAIN}": {"TXT": [f"v=STSv1; id={STS_ID}"]},
        f"mta-sts.{DOMAIN}": {"CNAME": [HOST]},
        f"_smtp._tls.{DOMAIN}": {"TXT": [f"v=TLSRPTv1; rua=mailto:tls@{DOMAIN}"]},
        PTR4: {"PTR": [HOST]},
        "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa":
            {"PTR": [HOST]},
    }
    for key in keys:  # served split into 255-octet strings by the test server
        zones[key.record_name] = {"TXT": [key.record()]}
    return zones


@pytest.fixture
def server(keys: list[DkimKey]) -> Iterator[DnsServer]:
    with DnsServer(good_zones(keys)) as dns_server:  # type: ignore[arg-type]
        yield dns_server


def setup_for(keys: list[DkimKey], mta_sts_id: str | None = STS_ID,
              **extra: Any) -> DoctorSetup:
    records = {DOMAIN: parse_records(dns_records(DOMAIN, HOST, keys, mta_sts_id=mta_sts_id))}
    return DoctorSetup(hostname=HOST, domains=(DOMAIN,), records=records,
                       data_dir=Path("/nonexistent"), cert_path=None, **extra)


def doctor(server: DnsServer, keys: list[DkimKey], *, timeout: float = 2.0,
           mta_sts_id: str | None = STS_ID, **extra: Any) -> Doctor:
    resolver = make_resolver([server.address], timeout)
    return Doctor(setup_for(keys, mta_sts_id, **extra), DnsLookups(resolver))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def assert_fix(result: CheckResult, status: Status, *in_fix: str) -> None:
    assert result.status is status, result
    assert result.why_it_matters
    for text in in_fix:
        assert text in result.fix, result.fix


# --- everything in order ------------------------------------------------------------------------

def test_every_dns_check_is_ok_with_the_printed_records(server: DnsServer,
                                                        keys: list[DkimKey]) -> None:
    from mailhouse.service.doctor_host import check_ptr

    d = doctor(server, keys)

    async def checks() -> list[CheckResult]:
        return [await d.check_host_addresses(), await d.check_mx(DOMAIN),
                await d.check_spf(DOMAIN), *await d.check_dkim(DOMAIN),
                await d.check_dmarc(DOMAIN), await d.check_mta_sts(DOMAIN),
                await d.check_tls_rpt(DOMAIN), *await check_ptr(d)]

    results = run(checks())
    assert [r.status for r in results] == [Status.OK] * len(results), results
    assert [r.name for r in results] == [
        f"address {HOST}", f"mx {DOMAIN}", f"spf {DOMAIN}",
        *(f"dkim {k.record_name}" for k in keys), f"dmarc {DOMAIN}", f"mta-sts {DOMAIN}",
        f"tls-rpt {DOMAIN}", f"ptr {ADDRESS}", f"ptr {ADDRESS6}"]
    assert results[2].found == "v=spf1 mx -all (1 DNS lookup)"


# --- host addresses and MX ----------------------------------------------------------------------

def test_hostname_without_address_fails(server: DnsServer, keys: list[DkimKey]) -> None:
    server.remove(HOST)
    result = run(doctor(server, keys).check_host_addresses())
    assert_fix(result, Status.FAIL, f"{HOST}. 3600 IN A")
    assert "does not exist" in result.found


def test_declared_address_not_published_fails(server: DnsServer, keys: list[DkimKey]) -> None:
    result = run(doctor(server, keys, public_addresses=("192.0.2.77",)).check_host_addresses())
    assert_fix(result, Status.FAIL, "192.0.2.77")


@pytest.mark.parametrize("records", [[], [(10, "other.example.net")], [(0, ".")]])
def test_mx_not_naming_the_hostname_fails(server: DnsServer, keys: list[DkimKey],
                                          records: list[tuple[int, str]]) -> None:
    server.set(DOMAIN, "MX", records)
    result = run(doctor(server, keys).check_mx(DOMAIN))
    assert_fix(result, Status.FAIL, f"publish: {DOMAIN}. 3600 IN MX 10 {HOST}.")


def test_mx_beside_others_is_ok(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(DOMAIN, "MX", [(5, "backup.example.net"), (10, HOST)])
    assert run(doctor(server, keys).check_mx(DOMAIN)).status is Status.OK


def test_servfail_and_timeout_are_failures_with_the_reason(server: DnsServer,
                                                           keys: list[DkimKey]) -> None:
    server.set_behaviour(DOMAIN, SERVFAIL)
    result = run(doctor(server, keys).check_mx(DOMAIN))
    assert result.status is Status.FAIL and "SERVFAIL" in result.found
    server.set_behaviour(DOMAIN, TIMEOUT)
    result = run(doctor(server, keys, timeout=0.3).check_mx(DOMAIN))
    assert result.status is Status.FAIL and "no answer in time" in result.found


# --- SPF ----------------------------------------------------------------------------------------

def test_spf_missing_fails(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(DOMAIN, "TXT", ["unrelated"])
    assert_fix(run(doctor(server, keys).check_spf(DOMAIN)), Status.FAIL,
               f'{DOMAIN}. 3600 IN TXT "v=spf1 mx -all"')


def test_two_spf_records_fail(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(DOMAIN, "TXT", ["v=spf1 mx -all", "V=SPF1 a -all"])
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert_fix(result, Status.FAIL, "keep one")
    assert "RFC 7208 §4.5" in result.why_it_matters


@pytest.mark.parametrize("record", ["v=spf1 ip4:198.51.100.0/24 -all", "v=spf1 -all",
                                    "v=spf1 ~all", "v=spf1 ip4:192.0.2.10 ?all"])
def test_spf_not_allowing_the_server_fails(server: DnsServer, keys: list[DkimKey],
                                           record: str) -> None:
    server.set(DOMAIN, "TXT", [record])
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert_fix(result, Status.FAIL, "v=spf1 mx -all")
    assert "does not allow" in result.found


@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
    f"v=spf1 a:{HOST} -all",
    "v=spf1 a:net.example.test/24 a:net.example.test//64 -all",
    "v=spf1 include:spf.example.test -all",
    "v=spf1 redirect=spf.example.test",
    "v=spf1 -ip4:203.0.113.1 mx/32 ~all",
])
def test_spf_allowing_the_server_is_ok(server: DnsServer, keys: list[DkimKey],
                                       record: str) -> None:
    server.set(DOMAIN, "TXT", [record])
    server.set("spf.example.test", "TXT", ["v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"])
    server.set("net.example.test", "A", ["192.0.2.1"])
    server.set("net.example.test", "AAAA", ["2001:db8::1"])
    assert run(doctor(server, keys).check_spf(DOMAIN)).status is Status.OK


def _include_chain(server: DnsServer, lookups: int) -> None:
    """An SPF tree needing exactly `lookups` DNS lookups: a chain of includes, the last one
    allowing the server."""
    server.set(DOMAIN, "TXT", ["v=spf1 include:s1.example.test -all"])
    for i in range(1, lookups):
        server.set(f"s{i}.example.test", "TXT", [f"v=spf1 include:s{i + 1}.example.test -all"])
    server.set(f"s{lookups}.example.test", "TXT", ["v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"])


def test_spf_at_the_lookup_limit_is_ok_and_over_it_fails(server: DnsServer,
                                                         keys: list[DkimKey]) -> None:
    _include_chain(server, SPF_MAX_LOOKUPS)
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert result.status is Status.OK and f"({SPF_MAX_LOOKUPS} DNS lookups)" in result.found
    _include_chain(server, SPF_MAX_LOOKUPS + 1)
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert_fix(result, Status.FAIL, "ip4:/ip6:")
    assert f"needs {SPF_MAX_LOOKUPS + 1} DNS lookups" in result.found
    assert "RFC 7208 §4.6.4" in result.why_it_matters


def test_spf_counts_every_lookup_term(server: DnsServer, keys: list[DkimKey]) -> None:
    # a, mx, ptr, exists, include and redirect each count; ip4, ip6 and all do not.
    server.set(DOMAIN, "TXT", ["v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 a mx ptr "
                               "exists:%{i}.x.example.test a:a.example.test mx:m.example.test "
                               "include:i.example.test redirect=r.example.test"])
    server.set("i.example.test", "TXT", ["v=spf1 a a -all"])
    server.set("r.example.test", "TXT", ["v=spf1 mx -all"])
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert result.status is Status.FAIL and "needs 11 DNS lookups" in result.found


def test_spf_include_loop_ends(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(DOMAIN, "TXT", ["v=spf1 ip4:192.0.2.10 include:loop.example.test -all"])
    server.set("loop.example.test", "TXT", ["v=spf1 include:loop.example.test -all"])
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert result.status is Status.FAIL and "DNS lookups" in result.found


def test_spf_broken_include_warns(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(DOMAIN, "TXT", ["v=spf1 mx include:gone.example.test -all"])
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert result.status is Status.WARN and "gone.example.test has 0 SPF records" in result.found


def test_spf_without_known_address_skips(server: DnsServer, keys: list[DkimKey]) -> None:
    server.remove(HOST)
    result = run(doctor(server, keys).check_spf(DOMAIN))
    assert result.status is Status.SKIP and "--ip" in result.fix


def test_spf_terms_parse_qualifiers_values_and_modifiers() -> None:
    terms = [(t.qualifier, t.name, t.value) for t in spf_terms(
        "v=spf1 -ip4:192.0.2.0/24 ~a/24 MX:mx.example.test ?include:x.test "
        "ip6:2001:db8::/32 redirect=r.test exp=e.test all")]
    assert terms == [("-", "ip4", "192.0.2.0/24"), ("~", "a", "/24"),
                     ("+", "mx", "mx.example.test"), ("?", "include", "x.test"),
                     ("+", "ip6", "2001:db8::/32"), ("", "redirect", "r.test"),
                     ("", "exp", "e.test"), ("+", "all", "")]


@given(st.text(max_size=200))
def test_spf_terms_take_any_text(text: str) -> None:
    for term in spf_terms("v=spf1 " + text):
        assert term.qualifier in ("", "+", "-", "~", "?")


# --- DKIM ---------------------------------------------------------------------------------------

def test_dkim_key_split_at_odd_places_is_joined(server: DnsServer, keys: list[DkimKey]) -> None:
    record = keys[0].record()
    assert len(record) > 255  # an RSA-2048 record needs two strings at least
    server.set(keys[0].record_name, "TXT", [(record[:100], record[100:300], record[300:])])
    results = run(doctor(server, keys).check_dkim(DOMAIN))
    assert [r.status for r in results] == [Status.OK, Status.OK]


def test_dkim_folded_key_matches(server: DnsServer, keys: list[DkimKey]) -> None:
    tags = _dkim_tags(keys[1].record())
    server.set(keys[1].record_name, "TXT",
               [f"v=DKIM1;k=ed25519 ; p = {tags['p'][:20]} {tags['p'][20:]}"])
    assert run(doctor(server, keys).check_dkim(DOMAIN))[1].status is Status.OK


def test_dkim_missing_or_different_key_fails(server: DnsServer, keys: list[DkimKey]) -> None:
    server.remove(keys[0].record_name)
    server.set(keys[1].record_name, "TXT", ["v=DKIM1; k=ed25519; p=AAAAotherkeyAAAA"])
    missing, different = run(doctor(server, keys).check_dkim(DOMAIN))
    assert_fix(missing, Status.FAIL, f"{keys[0].record_name}. 3600 IN TXT \"v=DKIM1; k=rsa")
    assert "does not exist" in missing.found
    assert_fix(different, Status.FAIL, f"{keys[1].record_name}. 3600 IN TXT")
    assert different.found.startswith("a different key")


def test_dkim_same_key_other_type_fails(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(keys[1].record_name, "TXT", [keys[1].record().replace("k=ed25519", "k=rsa")])
    assert run(doctor(server, keys).check_dkim(DOMAIN))[1].status is Status.FAIL


def test_domain_without_keys_fails_with_dns_records_as_fix(server: DnsServer) -> None:
    result, = run(doctor(server, []).check_dkim(DOMAIN))
    assert_fix(result, Status.FAIL, f"mailhouse dns-records {DOMAIN}")


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=5))
def test_dkim_p_tag_ignores_folding_whitespace(cuts: list[int]) -> None:
    key = "MCowBQYDK2VwAyEA" + "x" * 30
    folded = key
    for cut in sorted(cuts, reverse=True):
        folded = folded[:cut] + " \t " + folded[cut:]
    assert _dkim_tags(f"v=DKIM1; k=ed25519; p={folded}")["p"] == key


# --- DMARC, MTA-STS, TLS-RPT --------------------------------------------------------------------

@pytest.mark.parametrize(("records", "text"), [
    ([], "no DMARC record"),
    (["v=DMARC1; rua=mailto:x@example.test"], "no valid p="),
    (["v=DMARC1; p=maybe"], "no valid p="),
    (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "2 DMARC records"),
])
def test_dmarc_missing_or_unparseable_fails(server: DnsServer, keys: list[DkimKey],
                                            records: list[str], text: str) -> None:
    server.set(f"_dmarc.{DOMAIN}", "TXT", records)
    result = run(doctor(server, keys).check_dmarc(DOMAIN))
    assert_fix(result, Status.FAIL, f"_dmarc.{DOMAIN}. 3600 IN TXT \"v=DMARC1; p=quarantine")
    assert text in result.found


def test_dmarc_reject_is_ok(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(f"_dmarc.{DOMAIN}", "TXT", ["v=DMARC1;p=reject"])
    assert run(doctor(server, keys).check_dmarc(DOMAIN)).status is Status.OK


@pytest.mark.parametrize("records", [[], ["v=STSv1"], ["v=STSv1; id=1", "v=STSv1; id=2"],
                                     ["v=STSv1; id=stale"]])
def test_mta_sts_missing_incomplete_or_stale_warns(server: DnsServer, keys: list[DkimKey],
                                                   records: list[str]) -> None:
    """The server serves a policy: the record must be there once, with the served id."""
    server.set(f"_mta-sts.{DOMAIN}", "TXT", records)
    result = run(doctor(server, keys).check_mta_sts(DOMAIN))
    assert_fix(result, Status.WARN, f"_mta-sts.{DOMAIN}. 3600 IN TXT \"v=STSv1; id={STS_ID}\"",
               f"mta-sts.{DOMAIN}. 3600 IN CNAME {HOST}.", f"mta-sts.{DOMAIN}: [acme]")
    if records == ["v=STSv1; id=stale"]:
        assert f"served now has id={STS_ID}" in result.found


def test_mta_sts_with_the_served_id_is_ok(server: DnsServer, keys: list[DkimKey]) -> None:
    server.set(f"_mta-sts.{DOMAIN}", "TXT", [f"v=STSv1; id={STS_ID}"])
    assert run(doctor(server, keys).check_mta_sts(DOMAIN)).status is Status.OK


def test_mta_sts_without_a_served_policy_says_how_to_serve_one(server: DnsServer,
                                                               keys: list[DkimKey]) -> None:
    result = run(doctor(server, keys, mta_sts_id=None).check_mta_sts(DOMAIN))
    assert_fix(result, Status.WARN, "[web] listen", "RFC 8461 §3.3")


@pytest.mark.parametrize("records", [[], ["v=TLSRPTv1"]])
def test_tls_rpt_missing_or_incomplete_warns(server: DnsServer, keys: list[DkimKey],
                                             records: list[str]) -> None:
    server.set(f"_smtp._tls.{DOMAIN}", "TXT", records)
    assert_fix(run(doctor(server, keys).check_tls_rpt(DOMAIN)), Status.WARN,
               f"_smtp._tls.{DOMAIN}. 3600 IN TXT \"v=TLSRPTv1; rua=mailto:")


# --- PTR / FCrDNS -------------------------------------------------------------------------------

def test_ptr_missing_wrong_or_not_confirmed_fails(server: DnsServer,
                                                  keys: list[DkimKey]) -> None:
    from mailhouse.service.doctor_host import check_ptr

    server.remove(PTR4)
    server.set("11.2.0.192.in-addr.arpa", "PTR", ["vps-11.provider.example"])
    server.set("12.2.0.192.in-addr.arpa", "PTR", [HOST])
    d = doctor(server, keys, public_addresses=("192.0.2.10", "192.0.2.11", "192.0.2.12"))
    missing, wrong, unconfirmed = run(check_ptr(d))
    assert missing.status is Status.FAIL and "PTR" in missing.found
    assert wrong.status is Status.FAIL and wrong.found == "vps-11.provider.example"
    assert "reverse DNS to mx.example.test" in wrong.fix
    assert unconfirmed.status is Status.FAIL and "does not resolve back" in unconfirmed.found
    assert unconfirmed.fix == f"publish: {HOST}. 3600 IN A 192.0.2.12"


def test_ptr_without_any_address_skips(server: DnsServer, keys: list[DkimKey]) -> None:
    from mailhouse.service.doctor_host import check_ptr

    server.remove(HOST)
    result, = run(check_ptr(doctor(server, keys)))
    assert result.status is Status.SKIP and "--ip" in result.fix


# --- client records (SRV, autoconfig) -----------------------------------------------------------

def test_client_records_missing_warn_and_published_are_ok(server: DnsServer,
                                                          keys: list[DkimKey]) -> None:
    result = run(doctor(server, keys).check_client_records(DOMAIN))
    assert result.status is Status.WARN and result.found.startswith("8 of 8 missing")
    assert f"_imaps._tcp.{DOMAIN}. 3600 IN SRV 0 1 993 {HOST}." in result.fix
    assert f"autoconfig.{DOMAIN}. 3600 IN CNAME {HOST}." in result.fix
    for rrset in setup_for(keys).records[DOMAIN]:
        if rrset.rdtype.name in ("SRV", "CNAME"):
            server.set(rrset.name.to_text(), rrset.rdtype.name, [r.to_text() for r in rrset])
    assert run(doctor(server, keys).check_client_records(DOMAIN)).status is Status.OK
    server.set(f"_imaps._tcp.{DOMAIN}", "SRV", ["0 1 993 old.example.test."])
    result = run(doctor(server, keys).check_client_records(DOMAIN))
    assert result.status is Status.WARN and result.found == (
        f"1 of 8 missing or different: _imaps._tcp.{DOMAIN}")


# --- the whole run ------------------------------------------------------------------------------

def test_run_reports_a_broken_check_and_goes_on(server: DnsServer, keys: list[DkimKey],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Doctor, domain: str) -> CheckResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(Doctor, "check_dmarc", broken)
    results = run(doctor(server, keys).run())
    names = [r.name for r in results]
    crashed = results[names.index(f"dmarc {DOMAIN}")]
    assert crashed.status is Status.FAIL and "RuntimeError('boom')" in crashed.found
    assert names[-2:] == ["queue age", "clock"] and f"mta-sts {DOMAIN}" in names
