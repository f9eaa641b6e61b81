"""`mailhouse doctor`: live checks of what makes a mail server work out there, each with why it
matters and the exact fix. A service module, so the command line and the web admin show the
same results from the same code.

Every check is an async function of a `DoctorSetup` (what the server is and has: hostname,
domains, the records `dns-records` prints, certificate path, data_dir, listeners) and the
injected world: a resolver (dnspython pointed at any nameservers; the tests use a local test DNS
server), a clock, `statvfs`, the queue listing and an optional reference time. None raises: a
failure to look something up is a result too.

Statuses: ok; warn (works, but something will bite: an expiring certificate, no MTA-STS);
fail (mail is lost, rejected or marked as spam until fixed); skip (cannot be judged from here,
with the reason). `mailhouse doctor` exits 1 when any result is fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

import dns.rdatatype
import dns.rrset

from mailhouse.service.doctor_dns import (
    SPF_MAX_LOOKUPS,
    DnsLookups,
    Lookup,
    count_spf_lookups,
    spf_allows,
    spf_records,
    txt_value,
    zone_fragment,
)
from mailhouse.store.base import QueuedMessage


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str  # "mx example.org", "certificate", …
    status: Status
    found: str  # what the check saw, one line
    why_it_matters: str = ""  # for every non-ok result
    fix: str = ""  # the record to publish, the command to run

    def as_json(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}


# Limits: each has a name and a test that crosses it.
CERT_EXPIRY_WARNING: Final = 14 * 86400.0  # seconds before notAfter: warn
DISK_WARN_FRACTION: Final = 0.10  # free space of data_dir's file system below this: warn
DISK_WARN_BYTES: Final = 1 << 30  # or below 1 GiB
DISK_FAIL_FRACTION: Final = 0.01  # below 1 % or 100 MiB: fail (deliveries start failing)
DISK_FAIL_BYTES: Final = 100 << 20
QUEUE_AGE_WARN: Final = 3600.0  # oldest pending message older than an hour: warn
QUEUE_AGE_FAIL: Final = 86400.0  # older than a day: fail
CLOCK_SKEW_WARN: Final = 2.0  # seconds off the reference
CLOCK_SKEW_FAIL: Final = 60.0
CONNECT_TIMEOUT: Final = 5.0  # per port and for the SMTP banner


@dataclass(frozen=True, slots=True)
class Listener:
    kind: str  # "smtp", "imaps", …
    host: str  # as configured; 0.0.0.0 / :: mean every address
    port: int


@dataclass(frozen=True, slots=True)
class DoctorSetup:
    """What this installation is; the command line (or the admin) builds it from the config."""

    hostname: str
    domains: tuple[str, ...]
    # The records `dns-records` prints, per domain (doctor_dns.parse_records of its lines).
    records: dict[str, list[dns.rrset.RRset]]
    data_dir: Path
    cert_path: Path | None  # the configured certificate, else the self-signed one, else None
    listeners: tuple[Listener, ...] = ()
    # The server's public addresses (--ip); empty: the hostname's A/AAAA records stand in.
    public_addresses: tuple[str, ...] = ()


StatVfs = Callable[[Path], os.statvfs_result]
QueueListing = Callable[[], Awaitable[list[QueuedMessage]]]


@dataclass(slots=True)
class Doctor:
    setup: DoctorSetup
    lookups: DnsLookups
    clock: Callable[[], float] = time.time
    statvfs: StatVfs = field(default=lambda path: os.statvfs(path))  # looked up per call
    queue: QueueListing | None = None
    # Seconds since the epoch from a trusted source (an NTP server, …); None: clock is skipped.
    reference_time: Callable[[], Awaitable[float]] | None = None
    connect_timeout: float = CONNECT_TIMEOUT
    _addresses: list[str] | None = field(default=None, init=False)

    async def run(self) -> list[CheckResult]:
        """Every check, in the order a newcomer fixes things: DNS per domain, then the host."""
        # Imported here: doctor_host builds on this module's types.
        from mailhouse.service.doctor_host import (
            check_banner,
            check_certificate,
            check_clock,
            check_disk,
            check_ports,
            check_ptr,
            check_queue_age,
        )

        async def host_checks() -> list[CheckResult]:
            return [check_certificate(self), check_disk(self)]

        steps: list[tuple[str, Awaitable[CheckResult | list[CheckResult]]]] = [
            ("address", self.check_host_addresses())]
        for domain in self.setup.domains:
            steps += [(f"mx {domain}", self.check_mx(domain)),
                      (f"spf {domain}", self.check_spf(domain)),
                      (f"dkim {domain}", self.check_dkim(domain)),
                      (f"dmarc {domain}", self.check_dmarc(domain)),
                      (f"mta-sts {domain}", self.check_mta_sts(domain)),
                      (f"tls-rpt {domain}", self.check_tls_rpt(domain)),
                      (f"client records {domain}", self.check_client_records(domain))]
        steps += [("ptr", check_ptr(self)), ("smtp banner", check_banner(self)),
                  ("ports", check_ports(self)), ("certificate, disk", host_checks()),
                  ("queue age", check_queue_age(self)), ("clock", check_clock(self))]
        results: list[CheckResult] = []
        for name, step in steps:
            try:
                outcome = await step
            except Exception as exc:  # one broken check must not hide the others
                outcome = CheckResult(name, Status.FAIL, f"the check itself failed: {exc!r}",
                                      "A check that cannot run says nothing about what it "
                                      "checks.", "report this as a bug, with the output of "
                                      "`mailhouse doctor --json`")
            results += outcome if isinstance(outcome, list) else [outcome]
        return results

    # --- helpers ---------------------------------------------------------------------------
    def expected(self, domain: str, rdtype: str, prefix: str = "") -> list[dns.rrset.RRset]:
        owner = f"{prefix}{domain}".lower().rstrip(".") + "."
        kind = dns.rdatatype.from_text(rdtype)
        return [r for r in self.setup.records.get(domain, [])
                if r.rdtype == kind and r.name.to_text().lower() == owner]

    def publish(self, rrsets: Sequence[dns.rrset.RRset]) -> str:
        """The fix for a missing or wrong record: the zone lines `dns-records --zone` prints."""
        if not rrsets:
            return "publish what `mailhouse dns-records --zone DOMAIN` prints"
        return "publish: " + " / ".join(zone_fragment(rrsets))

    async def server_addresses(self) -> list[str]:
        """--ip if given, else the hostname's addresses."""
        if self._addresses is None:
            if self.setup.public_addresses:
                self._addresses = list(self.setup.public_addresses)
            else:
                self._addresses = (await self.lookups.addresses(self.setup.hostname))[1]
        return self._addresses

    # --- DNS checks ------------------------------------------------------------------------
    async def check_host_addresses(self) -> CheckResult:
        name = f"address {self.setup.hostname}"
        answer, found = await self.lookups.addresses(self.setup.hostname)
        why = ("Other servers deliver to the address the hostname resolves to, and check that "
               "the name in our greeting resolves (FCrDNS); without A/AAAA records no mail "
               "arrives.")
        if not found:
            return CheckResult(name, Status.FAIL, answer.describe("A or AAAA record"), why,
                               f"publish: {self.setup.hostname}. 3600 IN A <the server's public "
                               "IPv4 address> (and AAAA for IPv6)")
        missing = [a for a in self.setup.public_addresses if a not in found]
        if missing:
            return CheckResult(
                name, Status.FAIL, f"{', '.join(found)} (not {', '.join(missing)})",
                "Mail for our domains goes to the addresses the hostname resolves to; this "
                "server's address is not among them.",
                f"publish: {self.setup.hostname}. 3600 IN A/AAAA {', '.join(missing)}")
        return CheckResult(name, Status.OK, ", ".join(found))

    async def check_mx(self, domain: str) -> CheckResult:
        name = f"mx {domain}"
        why = ("Senders look up the MX records of a domain to find where to deliver its mail "
               "(RFC 5321 §5.1); mail to this domain goes elsewhere or nowhere until they name "
               f"{self.setup.hostname}.")
        fix = self.publish(self.expected(domain, "MX"))
        answer, hosts = await self.lookups.mx_hosts(domain)
        if answer.status is not Lookup.OK:
            return CheckResult(name, Status.FAIL, answer.describe("MX record"), why, fix)
        shown = ", ".join(r.to_text() for r in answer.records)
        if hosts == [""]:
            return CheckResult(name, Status.FAIL, f"null MX ({shown}): the domain refuses "
                               "all mail (RFC 7505)", why, fix)
        if self.setup.hostname.lower().rstrip(".") not in hosts:
            return CheckResult(name, Status.FAIL, shown, why, fix)
        return CheckResult(name, Status.OK, shown)

    async def check_spf(self, domain: str) -> CheckResult:
        name = f"spf {domain}"
        why = ("Receivers check that mail from this domain comes from a server its SPF record "
               "allows (RFC 7208); mail from an unlisted server is rejected or marked as spam, "
               "and DMARC needs SPF or DKIM to pass.")
        fix = self.publish([r for r in self.expected(domain, "TXT")
                            if any(txt_value(d).startswith("v=spf1") for d in r)])
        answer, texts = await self.lookups.txt(domain)
        if answer.status is Lookup.ERROR:
            return CheckResult(name, Status.FAIL, answer.describe("SPF record"), why, fix)
        records = spf_records(texts)
        if not records:
            return CheckResult(name, Status.FAIL, "no SPF record (no TXT \"v=spf1 …\")", why,
                               fix)
        if len(records) > 1:
            return CheckResult(
                name, Status.FAIL, f"{len(records)} SPF records: " + " | ".join(records),
                why + " Two or more SPF records are an error: receivers ignore them all "
                "(RFC 7208 §4.5).", "keep one record; " + fix)
        record = records[0]
        walk = await count_spf_lookups(self.lookups, domain, record)
        if walk.lookups > SPF_MAX_LOOKUPS:
            return CheckResult(
                name, Status.FAIL, f"{record} needs {walk.lookups} DNS lookups",
                why + f" More than {SPF_MAX_LOOKUPS} lookups (include, a, mx, ptr, exists, "
                "redirect, counted through every include) make receivers give up with a "
                "permerror (RFC 7208 §4.6.4).",
                "replace includes by the ip4:/ip6: ranges they stand for, or drop unused "
                "ones; " + fix)
        addresses = await self.server_addresses()
        if not addresses:
            return CheckResult(name, Status.SKIP, f"{record} (the server's addresses are "
                               "unknown: no A/AAAA for the hostname and no --ip)", why,
                               "give the server's public address with --ip")
        refused = [a for a in addresses
                   if await spf_allows(self.lookups, domain, record, a) != "+"]
        if refused:
            return CheckResult(name, Status.FAIL,
                               f"{record} does not allow {', '.join(refused)}", why, fix)
        found = f"{record} ({walk.lookups} DNS lookup{'' if walk.lookups == 1 else 's'})"
        if walk.problems:
            return CheckResult(name, Status.WARN, found + "; " + "; ".join(walk.problems),
                               why, "fix or remove the include named")
        return CheckResult(name, Status.OK, found)

    async def check_dkim(self, domain: str) -> list[CheckResult]:
        expected = [r for r in self.setup.records.get(domain, [])
                    if r.rdtype == dns.rdatatype.TXT and "._domainkey." in r.name.to_text()]
        why = ("Receivers verify our DKIM signatures with the public key published under the "
               "selector (RFC 6376 §3.6.2); a missing or different key makes every signature "
               "fail, and DMARC with it.")
        if not expected:
            return [CheckResult(f"dkim {domain}", Status.FAIL, "this server has no DKIM key for "
                                "the domain", why, f"run `mailhouse dns-records {domain}` (it "
                                "makes the keys) and publish the DKIM records it prints")]
        results = []
        for rrset in expected:
            owner = rrset.name.to_text(omit_final_dot=True)
            name = f"dkim {owner}"
            ours = _dkim_tags(txt_value(next(iter(rrset))))
            fix = self.publish([rrset])
            answer, texts = await self.lookups.txt(owner)
            published = [_dkim_tags(t) for t in texts]
            keys = [tags for tags in published if "p" in tags]
            if not keys:
                results.append(CheckResult(name, Status.FAIL,
                                           answer.describe("DKIM key record"), why, fix))
            elif any(tags.get("p") == ours["p"] and tags.get("k", "rsa") == ours["k"]
                     for tags in keys):
                results.append(CheckResult(name, Status.OK,
                                           f"k={ours['k']}, the key matches ours"))
            else:
                shown = ", ".join(f"k={t.get('k', 'rsa')} p={_short(t.get('p', ''))}"
                                  for t in keys)
                results.append(CheckResult(name, Status.FAIL, f"a different key: {shown}",
                                           why, fix))
        return results

    async def check_dmarc(self, domain: str) -> CheckResult:
        name = f"dmarc {domain}"
        why = ("DMARC tells receivers what to do with mail that fails SPF and DKIM "
               "(RFC 7489); large providers reject or junk mail from domains without it.")
        fix = self.publish(self.expected(domain, "TXT", "_dmarc."))
        answer, texts = await self.lookups.txt(f"_dmarc.{domain}")
        records = [t for t in texts if t.replace(" ", "").lower().startswith("v=dmarc1")]
        if not records:
            return CheckResult(name, Status.FAIL, answer.describe("DMARC record"), why, fix)
        if len(records) > 1:
            return CheckResult(name, Status.FAIL, f"{len(records)} DMARC records", why +
                               " With several records receivers apply none (RFC 7489 "
                               "§6.6.3).", "keep one; " + fix)
        tags = _tag_list(records[0])
        policy = tags.get("p", "").lower()
        if policy not in ("none", "quarantine", "reject"):
            return CheckResult(name, Status.FAIL, f"{records[0]} (no valid p= tag)", why +
                               " A record without a valid p= is ignored (RFC 7489 §6.3).", fix)
        return CheckResult(name, Status.OK, records[0])

    async def check_client_records(self, domain: str) -> CheckResult:
        """The RFC 6186 SRV records and the autoconfig CNAME `dns-records` prints: as
        published, or not at all (a record that differs sends clients to the wrong place)."""
        name = f"client records {domain}"
        expected = [r for r in self.setup.records.get(domain, [])
                    if r.rdtype in (dns.rdatatype.SRV, dns.rdatatype.CNAME)
                    and not r.name.to_text().lower().startswith("mta-sts.")]  # not a client's
        if not expected:
            return CheckResult(name, Status.SKIP, "none to publish")
        wrong: list[dns.rrset.RRset] = []
        for rrset in expected:
            answer = await self.lookups.query(rrset.name.to_text(),
                                              dns.rdatatype.to_text(rrset.rdtype))
            if {r.to_text().lower() for r in answer.records} != \
                    {r.to_text().lower() for r in rrset}:
                wrong.append(rrset)
        if wrong:
            names = ", ".join(r.name.to_text(omit_final_dot=True) for r in wrong)
            return CheckResult(
                name, Status.WARN, f"{len(wrong)} of {len(expected)} missing or different: "
                f"{names}", "Mail clients find the servers, ports and TLS modes from these "
                "(RFC 6186, RFC 8314; Thunderbird's autoconfig); without them users type the "
                "settings in by hand. Mail flows without them.", self.publish(wrong))
        return CheckResult(name, Status.OK, f"{len(expected)} records as printed")

    async def check_mta_sts(self, domain: str) -> CheckResult:
        name = f"mta-sts {domain}"
        answer, texts = await self.lookups.txt(f"_mta-sts.{domain}")
        records = [t for t in texts if t.replace(" ", "").lower().startswith("v=stsv1")]
        why = ("MTA-STS (RFC 8461) lets senders insist on TLS with a valid certificate when "
               "they deliver to this domain, so an attacker on the path cannot strip STARTTLS. "
               "Mail flows without it.")
        expected = self.expected(domain, "TXT", "_mta-sts.")
        if expected:  # this server serves the policy: the record must carry its id
            fix = (self.publish(expected + self.expected(domain, "CNAME", "mta-sts."))
                   + f" (and have the certificate name mta-sts.{domain}: [acme] extra_names)")
        else:
            fix = (f"set [web] listen (the policy is served there, RFC 8461 §3.3), then "
                   f"publish what `mailhouse dns-records {domain}` prints for _mta-sts")
        if len(records) != 1:
            found = (answer.describe("MTA-STS record") if not records
                     else f"{len(records)} records (RFC 8461 §3.1 requires one)")
            return CheckResult(name, Status.WARN, found, why, fix)
        published = _tag_list(records[0]).get("id")
        if published is None:
            return CheckResult(name, Status.WARN, f"{records[0]} (no id=)", why, fix)
        if not expected:  # published, but no policy is served here (§3.3 fetch fails)
            return CheckResult(name, Status.WARN, f"{records[0]}, but this server serves no "
                               "policy", why, fix)
        if expected:
            want = _tag_list(txt_value(next(iter(expected[0])))).get("id")
            if published != want:  # senders keep the policy they cached under the old id
                return CheckResult(
                    name, Status.WARN, f"{records[0]}: id={published}, but the policy served "
                    f"now has id={want}", why + " Senders refetch the policy only when the id "
                    "changes, so they keep enforcing the old one.", fix)
        return CheckResult(name, Status.OK, records[0])

    async def check_tls_rpt(self, domain: str) -> CheckResult:
        name = f"tls-rpt {domain}"
        answer, texts = await self.lookups.txt(f"_smtp._tls.{domain}")
        records = [t for t in texts if t.replace(" ", "").lower().startswith("v=tlsrptv1")]
        why = ("TLS-RPT (RFC 8460) makes senders report failed TLS deliveries to this domain, "
               "so a broken certificate or MTA-STS policy is noticed. Mail flows without it.")
        fix = (f"publish: _smtp._tls.{domain}. 3600 IN TXT \"v=TLSRPTv1; "
               f"rua=mailto:postmaster@{domain}\"")
        if len(records) != 1:
            found = (answer.describe("TLS-RPT record") if not records
                     else f"{len(records)} records (RFC 8460 §3 requires one)")
            return CheckResult(name, Status.WARN, found, why, fix)
        if "rua" not in _tag_list(records[0]):
            return CheckResult(name, Status.WARN, f"{records[0]} (no rua=)", why, fix)
        return CheckResult(name, Status.OK, records[0])


def _tag_list(text: str) -> dict[str, str]:
    """RFC 6376 §3.2 / RFC 7489 §6.4 tag=value; … lists, whitespace around tags ignored."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            tags.setdefault(tag.strip().lower(), value.strip())
    return tags


def _dkim_tags(text: str) -> dict[str, str]:
    """A DKIM key record's tags; p= with its whitespace removed (RFC 6376 §3.6.1: the base64
    may be folded), k= defaulting to rsa."""
    tags = _tag_list(text)
    if "p" in tags:
        tags["p"] = "".join(tags["p"].split())
    tags.setdefault("k", "rsa")
    return tags


def _short(key: str) -> str:
    return key if len(key) <= 24 else f"{key[:10]}…{key[-10:]}"

