"""The DNS side of `mailhouse doctor`: a small lookup cache over dnspython's async resolver, the
records `dns-records` tells operators to publish (parsed back into rdata, so the doctor checks
exactly what was printed), and SPF's lookup counting and address matching (RFC 7208).

Lookups are made through one `DnsLookups` per doctor run: every check asks for the hostname's
addresses, and a name is asked once. A lookup never raises: SERVFAIL, timeouts and bad names
come back as `Status.ERROR` with the reason, which the check reports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.rrset

from mailhouse.queue import mx

# RFC 7208 §4.6.4: at most 10 terms that cause DNS queries (include, a, mx, ptr, exists and the
# redirect modifier) in one evaluation, includes and redirects followed.
SPF_MAX_LOOKUPS: Final = 10
# How many SPF records (include/redirect targets) one count may fetch: past the limit the answer
# is already "too many", so the walk stops there (and a loop of includes ends).
SPF_MAX_FETCHES: Final = SPF_MAX_LOOKUPS + 1
SPF_LOOKUP_TERMS: Final = frozenset({"include", "a", "mx", "ptr", "exists"})
SPF_QUALIFIERS: Final = "+-~?"
# TTL of the records in `dns-records --zone`: an hour, so a mistake is corrected quickly while
# resolvers still cache the records.
ZONE_TTL: Final = 3600


class Lookup(Enum):
    OK = "ok"
    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, without records of that type
    ERROR = "error"  # SERVFAIL, timeout, refused: no answer either way


@dataclass(frozen=True, slots=True)
class Answer:
    status: Lookup
    records: tuple[dns.rdata.Rdata, ...] = ()
    error: str = ""

    def describe(self, what: str) -> str:
        """A short account of a failed lookup for a result's `found`."""
        if self.status is Lookup.NXDOMAIN:
            return f"no {what}: the name does not exist"
        if self.status is Lookup.NODATA:
            return f"no {what}"
        if self.status is Lookup.ERROR:
            return f"the lookup of the {what} failed: {self.error}"
        return what


def make_resolver(nameservers: Sequence[tuple[str, int]],
                  timeout: float) -> dns.asyncresolver.Resolver:
    """The queue's resolver without its cache: a doctor run asks each name once, and must
    see the zone as it is now."""
    return mx.make_resolver(nameservers, timeout, cache=False)


class DnsLookups:
    """Cached lookups for one doctor run."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver
        self._cache: dict[tuple[str, str], Answer] = {}

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().rstrip("."), rdtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = await self._query(key[0], rdtype)
        return cached

    async def _query(self, name: str, rdtype: str) -> Answer:
        try:
            qname = (dns.reversename.from_address(name) if rdtype == "PTR"
                     else dns.name.from_text(name))
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer(Lookup.NXDOMAIN)
        except dns.resolver.NoAnswer:
            return Answer(Lookup.NODATA)
        except dns.resolver.LifetimeTimeout:
            return Answer(Lookup.ERROR, error="no answer in time")
        except dns.resolver.NoNameservers:
            return Answer(Lookup.ERROR, error="the nameservers answered SERVFAIL or REFUSED")
        except (dns.exception.DNSException, ValueError) as exc:
            return Answer(Lookup.ERROR, error=str(exc) or type(exc).__name__)
        if answer.rrset is None:
            return Answer(Lookup.NODATA)
        return Answer(Lookup.OK, tuple(answer.rrset))

    async def txt(self, name: str) -> tuple[Answer, list[str]]:
        """The TXT records of `name`, each with its character-strings joined (RFC 7208 §3.3,
        RFC 6376 §3.6.2.2: a value longer than 255 octets is split and must be rejoined)."""
        answer = await self.query(name, "TXT")
        return answer, [b"".join(r.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
                        for r in answer.records]

    async def addresses(self, name: str) -> tuple[Answer, list[str]]:
        """IPv4 and IPv6 addresses of `name`; the Answer is the A lookup's, unless only the
        AAAA lookup found something or failed."""
        v4 = await self.query(name, "A")
        v6 = await self.query(name, "AAAA")
        found = [r.to_text() for r in v4.records] + [r.to_text() for r in v6.records]
        if found or v4.status is Lookup.ERROR:
            return (v4 if v4.records or v4.status is Lookup.ERROR else v6), found
        return (v6 if v6.status is Lookup.ERROR else v4), found

    async def mx_hosts(self, name: str) -> tuple[Answer, list[str]]:
        answer = await self.query(name, "MX")
        return answer, [r.exchange.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
                        for r in answer.records]


# --- the records dns-records prints -----------------------------------------------------------

def parse_records(lines: Iterable[str]) -> list[dns.rrset.RRset]:
    """`dns_records` lines (absolute owner, IN, type, rdata) as rrsets, one per owner and type,
    in first-seen order; comment lines are skipped. The doctor compares these with what the
    DNS serves, and `dns-records --zone` prints them, so both follow the one source."""
    rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        owner_text, klass, type_text, rdata_text = line.split(None, 3)
        owner = dns.name.from_text(owner_text)
        rdtype = dns.rdatatype.from_text(type_text)
        rdata = dns.rdata.from_text(dns.rdataclass.from_text(klass), rdtype, rdata_text)
        rrset = rrsets.setdefault((owner, rdtype),
                                  dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype))
        rrset.add(rdata, ZONE_TTL)
    return list(rrsets.values())


def zone_fragment(rrsets: Iterable[dns.rrset.RRset], ttl: int = ZONE_TTL) -> list[str]:
    """RFC 1035 §5.1 master-file lines: absolute owner names (with the trailing dot, so the
    fragment means the same under any $ORIGIN), an explicit TTL and class IN, TXT values as
    quoted character-strings of at most 255 octets (dnspython keeps the split it parsed)."""
    lines = []
    for rrset in rrsets:
        for rdata in rrset:
            lines.append(f"{rrset.name.to_text()} {ttl} IN "
                         f"{dns.rdatatype.to_text(rrset.rdtype)} {rdata.to_text()}")
    return lines


def txt_value(rdata: dns.rdata.Rdata) -> str:
    return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]


# --- SPF (RFC 7208) ---------------------------------------------------------------------------

def spf_records(texts: Iterable[str]) -> list[str]:
    """The SPF records among a name's TXT values: "v=spf1" alone or followed by a space,
    case-insensitively (RFC 7208 §4.5)."""
    return [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


@dataclass(frozen=True, slots=True)
class SpfTerm:
    qualifier: str  # "+", "-", "~", "?"; "" for modifiers
    name: str  # mechanism or modifier name, lower case
    value: str  # after ":" or "=" (may hold a "/cidr"), "" when absent


def spf_terms(record: str) -> list[SpfTerm]:
    """The terms after "v=spf1" (RFC 7208 §4.6.1); unknown ones kept for the caller to judge."""
    terms = []
    for word in record.split()[1:]:
        if "=" in word and ":" not in word.split("=", 1)[0]:
            name, value = word.split("=", 1)
            terms.append(SpfTerm("", name.lower(), value))
            continue
        qualifier = word[0] if word[0] in SPF_QUALIFIERS else "+"
        body = word[1:] if word[0] in SPF_QUALIFIERS else word
        name, _, value = body.partition(":")
        if "/" in name:  # "a/24", "mx/24": a CIDR length without a domain
            name, _, cidr = name.partition("/")
            value = "/" + cidr
        terms.append(SpfTerm(qualifier, name.lower(), value))
    return terms


@dataclass(frozen=True, slots=True)
class SpfWalk:
    lookups: int  # terms that cause DNS lookups, over the whole include/redirect tree
    problems: tuple[str, ...]  # includes that have no or several SPF records, lookups that failed


async def count_spf_lookups(dns_: DnsLookups, domain: str, record: str) -> SpfWalk:
    """Count the DNS-querying terms of `record` and of every include and redirect it reaches
    (RFC 7208 §4.6.4). A static count over the whole tree: what a receiver may have to spend in
    the worst case, whichever branch the sender's address ends up matching."""
    lookups = 0
    fetches = 0
    problems: list[str] = []
    pending: list[tuple[str, str]] = [(domain, record)]
    while pending:
        _, text = pending.pop(0)
        for term in spf_terms(text):
            if term.name in SPF_LOOKUP_TERMS or term.name == "redirect":
                lookups += 1
            if term.name not in ("include", "redirect") or "%" in term.value:
                continue  # macros (RFC 7208 §7) depend on the sender: counted, not followed
            if fetches >= SPF_MAX_FETCHES or lookups > SPF_MAX_LOOKUPS:
                continue
            fetches += 1
            target = term.value.rstrip(".")
            answer, texts = await dns_.txt(target)
            found = spf_records(texts)
            if len(found) == 1:
                pending.append((target, found[0]))
            elif answer.status is Lookup.ERROR:
                problems.append(f"{term.name}:{target}: {answer.error}")
            else:
                problems.append(f"{term.name}:{target} has {len(found)} SPF records "
                                "(a permerror, RFC 7208 §5.2)")
    return SpfWalk(lookups, tuple(problems))


async def spf_allows(dns_: DnsLookups, domain: str, record: str, address: str,
                     depth: int = 0) -> str | None:
    """The qualifier of the first term of `record` that matches `address`, following include
    and redirect; None when nothing matches (neutral, RFC 7208 §4.7). exists, ptr and macros
    are not evaluated (they never match here): a record that relies on them is reported as not
    allowing the server, with the record shown, and the operator judges."""
    if depth > SPF_MAX_LOOKUPS:
        return None
    ip = ipaddress.ip_address(address)
    redirect = None
    for term in spf_terms(record):
        if term.name == "redirect":
            redirect = term.value
            continue
        if "%" in term.value:
            continue
        matched = False
        if term.name == "all":
            return term.qualifier
        if term.name in ("ip4", "ip6"):
            try:
                matched = ip in ipaddress.ip_network(term.value, strict=False)
            except ValueError:
                matched = False
        elif term.name in ("a", "mx"):
            target, slash, cidr = term.value.partition("/")
            target, cidr = target or domain, slash + cidr
            hosts = [target] if term.name == "a" else (await dns_.mx_hosts(target))[1]
            for host in hosts:
                for found in (await dns_.addresses(host))[1]:
                    net = _network(found, cidr, ip.version)
                    matched |= net is not None and ip in net
        elif term.name == "include":
            _, texts = await dns_.txt(term.value)
            found_records = spf_records(texts)
            if len(found_records) == 1:
                inner = await spf_allows(dns_, term.value, found_records[0], address, depth + 1)
                matched = inner == "+"
        if matched:
            return term.qualifier
    if redirect is not None:
        _, texts = await dns_.txt(redirect)
        found_records = spf_records(texts)
        if len(found_records) == 1:
            return await spf_allows(dns_, redirect, found_records[0], address, depth + 1)
    return None


def _network(address: str, cidr: str, version: int) -> ipaddress.IPv4Network | \
        ipaddress.IPv6Network | None:
    """`address` widened by an "a/24" or "a/24//64" CIDR length (RFC 7208 §5.6)."""
    ip = ipaddress.ip_address(address)
    if ip.version != version:
        return None
    v4_part, _, v6_len = cidr.partition("//")
    length = v4_part.lstrip("/") if ip.version == 4 else v6_len
    try:
        return ipaddress.ip_network(f"{address}/{length}" if length else address, strict=False)
    except ValueError:
        return None
