"""MX resolution (RFC 5321 §5.1, RFC 7505) against the test DNS server on loopback."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import dns.asyncresolver
import dns.nameserver
import pytest

from mailhouse.queue import mx
from mailhouse.queue.mx import MxHost, MxResolver, Route, RouteFailure
from tests.helpers.dns import REFUSED, SERVFAIL, TIMEOUT, DnsServer

ZONES = {
    "dest.test": {"MX": [(10, "mx1.dest.test"), (20, "mx2.dest.test")]},
    "mx1.dest.test": {"A": ["127.0.0.2"]},
    "mx2.dest.test": {"A": ["127.0.0.3", "127.0.0.4"], "AAAA": ["::1"]},
    "plain.test": {"A": ["127.0.0.5"], "TXT": ["v=spf1 -all"]},
    "nodata.test": {"TXT": ["exists but no MX and no address"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "servfail.test": SERVFAIL,
    "refused.test": REFUSED,
    "slow.test": TIMEOUT,
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test"), (10, "c.equal.test"),
                          (5, "best.equal.test")]},
    "a.equal.test": {"A": ["127.0.1.1"]},
    "b.equal.test": {"A": ["127.0.1.2"]},
    "c.equal.test": {"A": ["127.0.1.3"]},
    "best.equal.test": {"A": ["127.0.1.4"]},
    "loop.test": {"MX": [(10, "mail.us.test"), (20, "backup.test")]},
    "backup.test": {"A": ["127.0.2.1"]},
    "mail.us.test": {"A": ["127.0.0.1"]},
    "backup-us.test": {"MX": [(10, "mx1.dest.test"), (20, "mail.us.test"),
                              (20, "backup.test"), (30, "mx2.dest.test")]},
    "loop-ip.test": {"MX": [(10, "other-name.test")]},
    "other-name.test": {"A": ["192.0.2.99"]},
    "deadmx.test": {"MX": [(10, "gone.test"), (20, "nodata.test")]},
    "flakymx.test": {"MX": [(10, "x.servfail.test")]},
    "halfmx.test": {"MX": [(10, "x.servfail.test"), (20, "mx1.dest.test")]},
    "alias.test": {"CNAME": "plain.test"},
    "mixednull.test": {"MX": [(0, "."), (10, "mx1.dest.test")]},
}
HOSTNAME = "mail.us.test"
LOCAL = frozenset({"192.0.2.99", "127.0.0.9", "alias-of-us.test"})


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONES) as server:
        yield server


def run(coro: Coroutine[Any, Any, Route | RouteFailure]) -> Route | RouteFailure:
    return asyncio.run(coro)


def resolver(server: DnsServer, *, seed: int = 0, timeout: float = 2.0) -> MxResolver:
    return MxResolver([server.address], hostname=HOSTNAME, local_addresses=LOCAL,
                      rng=random.Random(seed), timeout=timeout)


def route(server: DnsServer, domain: str, **kw: Any) -> Route:
    result = run(resolver(server, **kw).route(domain))
    assert isinstance(result, Route), result
    return result


def failure(server: DnsServer, domain: str, **kw: Any) -> RouteFailure:
    result = run(resolver(server, **kw).route(domain))
    assert isinstance(result, RouteFailure), result
    return result


def test_mx_hosts_by_preference_with_their_addresses(dns_server: DnsServer) -> None:
    result = route(dns_server, "dest.test")
    assert [(h.name, h.preference) for h in result.hosts] == [("mx1.dest.test", 10),
                                                              ("mx2.dest.test", 20)]
    assert result.hosts[0].addresses == ("127.0.0.2",)
    assert not result.implicit
    # Within a host: IPv4 first, each family in the RNG's order.
    orders = {route(dns_server, "dest.test", seed=seed).hosts[1].addresses for seed in range(20)}
    assert orders == {("127.0.0.3", "127.0.0.4", "::1"), ("127.0.0.4", "127.0.0.3", "::1")}


def test_equal_preferences_are_shuffled_by_the_injected_rng(dns_server: DnsServer) -> None:
    orders = set()
    for seed in range(30):
        hosts = route(dns_server, "equal.test", seed=seed).hosts
        assert hosts[0].name == "best.equal.test"  # the lowest preference always first
        assert [h.preference for h in hosts] == [5, 10, 10, 10]
        orders.add(tuple(h.name for h in hosts[1:]))
    assert len(orders) > 1
    assert route(dns_server, "equal.test", seed=7) == route(dns_server, "equal.test", seed=7)


def test_no_mx_means_the_domain_itself(dns_server: DnsServer) -> None:
    result = route(dns_server, "plain.test")
    assert result.implicit and result.hosts == (MxHost("plain.test", 0, ("127.0.0.5",)),)
    assert route(dns_server, "alias.test").hosts[0].addresses == ("127.0.0.5",)  # via CNAME


def test_no_mx_and_no_address_is_permanent(dns_server: DnsServer) -> None:
    assert failure(dns_server, "nodata.test").reply == mx.NO_ADDRESS


def test_null_mx_is_permanent_5_1_10(dns_server: DnsServer) -> None:
    reply = failure(dns_server, "nullmx.test").reply
    assert (reply.code, reply.enhanced) == (556, "5.1.10") and reply.permanent


def test_null_mx_among_real_ones_is_ignored(dns_server: DnsServer) -> None:
    assert [h.name for h in route(dns_server, "mixednull.test").hosts] == ["mx1.dest.test"]


def test_nxdomain_is_permanent_5_1_2(dns_server: DnsServer) -> None:
    reply = failure(dns_server, "no-such-domain.test").reply
    assert (reply.code, reply.enhanced) == (550, "5.1.2")
    assert reply.text == "Host or domain name not found"


@pytest.mark.parametrize("domain", ["servfail.test", "refused.test"])
def test_servfail_and_refused_are_temporary_4_4_3(dns_server: DnsServer, domain: str) -> None:
    reply = failure(dns_server, domain).reply
    assert (reply.code, reply.enhanced) == (451, "4.4.3") and reply.temporary


def test_timeout_is_temporary(dns_server: DnsServer) -> None:
    started = time.monotonic()
    reply = failure(dns_server, "slow.test", timeout=0.5).reply
    assert reply == mx.DNS_TEMPORARY
    assert time.monotonic() - started < 3


def test_best_mx_pointing_at_us_is_a_loop(dns_server: DnsServer) -> None:
    reply = failure(dns_server, "loop.test").reply  # best MX is our host name
    assert (reply.code, reply.enhanced) == (550, "5.4.6") and "loop.test" in reply.text
    reply = failure(dns_server, "loop-ip.test").reply  # best MX has one of our addresses
    assert reply.enhanced == "5.4.6"


def test_worse_mx_pointing_at_us_drops_it_and_everything_not_better(
        dns_server: DnsServer) -> None:
    hosts = route(dns_server, "backup-us.test").hosts
    assert [h.name for h in hosts] == ["mx1.dest.test"]  # backup.test (20) and mx2 (30) dropped


def test_our_own_domain_as_implicit_mx_is_a_loop(dns_server: DnsServer) -> None:
    dns_server.set("us-implicit.test", "A", ["127.0.0.9"])
    assert failure(dns_server, "us-implicit.test").reply.enhanced == "5.4.6"


def test_mx_hosts_without_addresses(dns_server: DnsServer) -> None:
    assert failure(dns_server, "deadmx.test").reply == mx.NO_MX_ADDRESS
    assert failure(dns_server, "flakymx.test").reply == mx.DNS_TEMPORARY
    assert [h.name for h in route(dns_server, "halfmx.test").hosts] == ["mx1.dest.test"]


def test_address_literals(dns_server: DnsServer) -> None:
    before = len(dns_server.queries)
    assert route(dns_server, "[192.0.2.1]").hosts == (MxHost("[192.0.2.1]", 0, ("192.0.2.1",)),)
    assert route(dns_server, "[IPv6:2001:DB8::1]").hosts[0].addresses == ("2001:db8::1",)
    assert failure(dns_server, "[192.0.2.99]").reply.enhanced == "5.4.6"  # ours
    assert failure(dns_server, "[300.1.1.1]").reply == mx.BAD_LITERAL
    assert len(dns_server.queries) == before  # no DNS for literals


def test_queries_go_to_the_configured_server(dns_server: DnsServer) -> None:
    route(dns_server, "dest.test")
    assert ("dest.test", "MX") in dns_server.queries
    assert ("mx1.dest.test", "A") in dns_server.queries
    assert ("mx1.dest.test", "AAAA") in dns_server.queries


def test_dns_helper_long_txt_records_and_tcp_fallback(dns_server: DnsServer) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 700  # longer than one 255-octet string
    dns_server.set("sel._domainkey.dest.test", "TXT", [key])
    dns_server.set("many.test", "A", [f"127.0.3.{i}" for i in range(1, 100)])  # > 512 octets

    async def lookups() -> tuple[bytes, int, int]:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(*dns_server.address)]
        txt = await res.resolve("sel._domainkey.dest.test", "TXT")
        many = await res.resolve("many.test", "A")
        nodata = await res.resolve("_domainkey.dest.test", "TXT", raise_on_no_answer=False)
        return b"".join(txt[0].strings), len(many), len(nodata.rrset or [])  # type: ignore[attr-defined]

    assert asyncio.run(lookups()) == (key.encode(), 99, 0)
