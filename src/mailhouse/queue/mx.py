"""Where mail for a domain goes: MX lookup and the hosts to try, in order (RFC 5321 §5.1).

- MX records sorted by preference; equal preferences in random order, so senders spread their
  load over equal hosts (the RNG is injected, so tests are deterministic).
- No MX records: the domain itself is the implicit MX, preference 0 (its A/AAAA records).
- RFC 7505 null MX ("0 ."): the domain accepts no mail, 556 5.1.10, permanently.
- NXDOMAIN: 550 5.1.2, permanently. SERVFAIL, REFUSED, timeouts: 451 4.4.3, try again later.
- An MX that is us (our host name, or one of our addresses) is a loop: that record and every one
  with an equal or worse preference are dropped; when nothing remains, 550 5.4.6 permanently.
- Address literals (`user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`, RFC 5321 §4.1.3) go to that
  address, no DNS involved.

DNS goes through dnspython's async resolver, to the `[dns]` nameservers or the system's, with
dnspython's LRU cache honouring each answer's TTL: a busy queue sends mail to the same few
domains again and again, and three lookups per message cost more than the delivery's own work.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from mailhouse.errors import Reply

# Hosts resolved per domain; Postfix tries at most 5 addresses (smtp_mx_address_limit), so a
# longer MX list is never used and would only cost lookups.
MAX_MX_HOSTS = 10
# Addresses kept per host (round-robin names can list dozens).
MAX_ADDRESSES_PER_HOST = 8
DEFAULT_DNS_TIMEOUT = 10.0

NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX, RFC 7505)")
NOT_FOUND = Reply(550, "5.1.2", "Host or domain name not found")
NO_ADDRESS = Reply(550, "5.1.2", "Host or domain name not found: no MX or address records")
NO_MX_ADDRESS = Reply(550, "5.4.4", "Unable to route: no address for any MX host")
DNS_TEMPORARY = Reply(451, "4.4.3", "Temporary DNS failure, will retry")
BAD_LITERAL = Reply(550, "5.1.2", "Invalid address literal")


def loop_reply(domain: str) -> Reply:
    return Reply(550, "5.4.6", f"Mail for {domain} loops back to myself")


@dataclass(frozen=True, slots=True)
class MxHost:
    """One next hop: its name (for SNI and logs; the literal for address literals), its
    preference and its addresses, in the order to try them."""

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """The hosts to try, best first; never empty."""

    hosts: tuple[MxHost, ...]
    implicit: bool = False  # no MX records: the domain's own addresses (RFC 5321 §5.1)


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """No host to try: `reply.permanent` says whether retrying can help."""

    reply: Reply


class _Lookup(Enum):
    OK = auto()
    NXDOMAIN = auto()
    NODATA = auto()
    TEMPORARY = auto()


def parse_literal(domain: str) -> str | None:
    """`[192.0.2.1]` / `[IPv6:2001:db8::1]` → the address; None when it is not a valid literal."""
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


def make_resolver(nameservers: Sequence[tuple[str, int]], timeout: float, *,
                  cache: bool = True) -> dns.asyncresolver.Resolver:
    """A resolver for the configured nameservers (ip, port), or the system's when empty;
    `cache=False` for one that must see the zone as it is now (doctor).
    Raises dns.resolver.NoResolverConfiguration without /etc/resolv.conf."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port)
                                for ip, port in nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    if cache:
        resolver.cache = dns.resolver.LRUCache(DNS_CACHE_ENTRIES)
    resolver.lifetime = timeout
    resolver.timeout = min(2.0, timeout)  # per try; lost UDP packets are retried until lifetime
    return resolver


DNS_CACHE_ENTRIES = 4096


class MxResolver:
    """Turns a domain into a `Route` or a `RouteFailure`. `local_addresses` holds our own IP
    addresses and host names (besides `hostname`), to recognise MX records pointing back at us."""

    def __init__(self, nameservers: Sequence[tuple[str, int]], *, hostname: str,
                 local_addresses: frozenset[str], rng: random.Random | None = None,
                 timeout: float = DEFAULT_DNS_TIMEOUT) -> None:
        self._nameservers = list(nameservers)
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._rng = rng or random.Random()
        names, ips = {hostname.lower().rstrip(".")}, set()
        for item in local_addresses:
            try:
                ips.add(str(ipaddress.ip_address(item)))
            except ValueError:
                names.add(item.lower().rstrip("."))
        self._local_names = frozenset(names)
        self._local_ips = frozenset(ips)

    async def route(self, domain: str) -> Route | RouteFailure:
        if domain.startswith("[") and domain.endswith("]"):
            return self._literal(domain)
        try:
            resolver = self._get_resolver()
        except dns.exception.DNSException:
            return RouteFailure(DNS_TEMPORARY)
        status, records = await self._mx(resolver, domain)
        if status is _Lookup.NXDOMAIN:
            return RouteFailure(NOT_FOUND)
        if status is _Lookup.TEMPORARY:
            return RouteFailure(DNS_TEMPORARY)
        implicit = not records
        if implicit:
            records = [(0, domain.lower().rstrip("."))]  # RFC 5321 §5.1 implicit MX
        elif all(name == "" for _, name in records):
            return RouteFailure(NULL_MX)  # RFC 7505 §3
        else:
            # A "." among real MX records is a misconfiguration; it is not a host to try.
            records = [(pref, name) for pref, name in records if name]
        ordered = self._order(records)[:MAX_MX_HOSTS]
        lookups = await asyncio.gather(*(self._addresses(resolver, name) for _, name in ordered))
        hosts: list[MxHost] = []
        temporary = False
        for (pref, name), (host_status, v4, v6) in zip(ordered, lookups, strict=True):
            # Shuffled here, in MX order, so one seed gives one route (gather's order varies).
            addresses = self._arrange(v4, v6)
            if name in self._local_names or any(a in self._local_ips for a in v4 + v6):
                # RFC 5321 §5.1: drop this and every MX with an equal or worse preference.
                hosts = [h for h in hosts if h.preference < pref]
                if not hosts:
                    return RouteFailure(loop_reply(domain))
                break
            temporary |= host_status is _Lookup.TEMPORARY
            if addresses:
                hosts.append(MxHost(name, pref, addresses))
        if hosts:
            return Route(tuple(hosts), implicit)
        if temporary:
            return RouteFailure(DNS_TEMPORARY)
        return RouteFailure(NO_ADDRESS if implicit else NO_MX_ADDRESS)

    def _literal(self, domain: str) -> Route | RouteFailure:
        address = parse_literal(domain)
        if address is None:
            return RouteFailure(BAD_LITERAL)
        if address in self._local_ips:
            return RouteFailure(loop_reply(domain))
        return Route((MxHost(domain, 0, (address,)),))

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = make_resolver(self._nameservers, self._timeout)
        return self._resolver

    def _order(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """By preference; equal preferences shuffled (RFC 5321 §5.1). Sorted first, so the
        outcome depends on the RNG alone, not on the order the DNS answer came in."""
        shuffled = sorted(records)
        self._rng.shuffle(shuffled)
        return sorted(shuffled, key=lambda record: record[0])  # sorted() is stable

    async def _mx(self, resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[
            _Lookup, list[tuple[int, str]]]:
        status, answer = await self._query(resolver, domain, "MX")
        records: list[tuple[int, str]] = []
        for rdata in answer:
            if not isinstance(rdata, MX):
                continue
            exchange: dns.name.Name = rdata.exchange
            # The root name "." (RFC 7505 null MX) becomes "".
            host = "" if exchange == dns.name.root else exchange.to_text(omit_final_dot=True)
            records.append((int(rdata.preference), host.lower()))
        return status, records

    async def _addresses(self, resolver: dns.asyncresolver.Resolver, name: str) -> tuple[
            _Lookup, list[str], list[str]]:
        """(status, IPv4 addresses, IPv6 addresses), each sorted."""
        (status4, answer4), (status6, answer6) = await asyncio.gather(
            self._query(resolver, name, "A"), self._query(resolver, name, "AAAA"))
        v4 = sorted({str(r.address) for r in answer4 if isinstance(r, A)})
        v6 = sorted({str(r.address) for r in answer6 if isinstance(r, AAAA)})
        if v4 or v6:
            return _Lookup.OK, v4, v6
        if _Lookup.TEMPORARY in (status4, status6):
            return _Lookup.TEMPORARY, [], []
        return (_Lookup.NXDOMAIN if _Lookup.NXDOMAIN in (status4, status6)
                else _Lookup.NODATA), [], []

    def _arrange(self, v4: list[str], v6: list[str]) -> tuple[str, ...]:
        """IPv4 first, where connectivity most often works; within a family in random order
        (round-robin DNS spreads load only if clients do not all take the first address)."""
        self._rng.shuffle(v4)
        self._rng.shuffle(v6)
        return tuple(v4 + v6)[:MAX_ADDRESSES_PER_HOST]

    async def _query(self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> tuple[
            _Lookup, list[dns.rdata.Rdata]]:
        try:
            qname = dns.name.from_text(name)
            answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return _Lookup.NXDOMAIN, []
        except dns.resolver.NoAnswer:
            return _Lookup.NODATA, []
        except dns.exception.DNSException:
            # NoNameservers (SERVFAIL/REFUSED everywhere), timeouts, bad names: temporary, as
            # every unclassified failure is (DESIGN.md: nothing is lost by waiting).
            return _Lookup.TEMPORARY, []
        rrset = answer.rrset
        if rrset is None:
            return _Lookup.NODATA, []
        return _Lookup.OK, list(rrset)
