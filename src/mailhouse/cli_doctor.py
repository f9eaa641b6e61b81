"""`mailhouse doctor [--domain D] [--ip ADDRESS] [--ntp SERVER] [--json]`: run the live checks
of service/doctor.py and show them: a table (status, check, found), then for every result that
is not ok why it matters and the exact fix. `--json` prints the list for scripts.

Exit codes: 0 no check failed (warnings and skips allowed), 1 at least one failed, 2 usage.
Like every admin command it opens the store directly (domains, queue) and reads the DKIM keys
without making any: a domain without keys fails its DKIM check with `dns-records` as the fix.
This module is imported by __main__ (which wires `register`), so it must not import __main__.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Sequence
from functools import partial
from typing import Final

import dns.exception

from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error, out, table
from mailhouse.cli_dns import dkim_keys, offered_services, records_for
from mailhouse.cli_queue import StoreRunner, run_with_store
from mailhouse.config import LISTENER_KINDS, Config
from mailhouse.message.dkim import DkimError
from mailhouse.service.accounts import InvalidInput, canonical_domain
from mailhouse.service.cert_info import presented_certificate
from mailhouse.service.doctor import CheckResult, Doctor, DoctorSetup, Listener, Status
from mailhouse.service.doctor_dns import DnsLookups, make_resolver, parse_records
from mailhouse.service.doctor_host import NTP_PORT, sntp_time
from mailhouse.store.base import Store

DNS_TIMEOUT: Final = 5.0  # seconds per name, all tries included


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = (),
             run: StoreRunner | None = None) -> None:
    """Add `doctor`. `parents` carries --config; `run` opens the store (a test seam)."""
    p = subparsers.add_parser(
        "doctor", parents=list(parents),
        help="check DNS, certificate, ports, disk, queue and clock live; say how to fix",
        description="Check what a working mail server needs, live: MX, SPF, DKIM, DMARC, "
                    "MTA-STS and TLS-RPT records of every domain, reverse DNS and the SMTP "
                    "banner, the listeners, the certificate, disk space, queue age and (with "
                    "--ntp) the clock. Every result that is not ok says why it matters and "
                    "the exact fix.",
        epilog="exit status: 0 nothing failed, 1 a check failed, 2 usage or config error")
    p.add_argument("--domain", metavar="DOMAIN", action="append",
                   help="check only this domain (repeatable; default: every domain)")
    p.add_argument("--ip", metavar="ADDRESS", action="append", type=_address,
                   help="the server's public address (repeatable; default: public_addresses "
                        "in the config, else the hostname's A/AAAA records)")
    p.add_argument("--ntp", metavar="SERVER", type=_ntp_server,
                   help="compare the clock with this NTP server (default: clock not checked)")
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.set_defaults(handler=partial(doctor_command, run=run or run_with_store))


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _ntp_server(text: str) -> tuple[str, int]:
    """"host", "host:port", "v6-address" or "[v6-address]:port"; port 123 when absent."""
    host, port = text, str(NTP_PORT)
    if text.startswith("[") and "]:" in text:
        host, port = text[1:].split("]:", 1)
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not a server: {text!r} (HOST or HOST:PORT)")
    return host, int(port)


def doctor_command(args: argparse.Namespace, config: Config, *,
                   run: StoreRunner = run_with_store) -> int:
    try:
        wanted = [canonical_domain(d) for d in args.domain or ()]
    except InvalidInput as exc:
        error(str(exc))
        return EXIT_USAGE
    try:
        resolver = make_resolver(config.dns.addresses(), DNS_TIMEOUT)
    except dns.exception.DNSException as exc:
        error(f"no resolver: {exc}; set [dns] nameservers in the config")
        return EXIT_FAILED

    async def action(store: Store) -> int:
        hosted = sorted((await store.directory()).domains)
        unknown = [d for d in wanted if d not in hosted]
        if unknown:
            error(f"{', '.join(unknown)}: not one of our domains (see `mailhouse domain list`)")
            return EXIT_FAILED
        setup = build_setup(config, wanted or hosted, tuple(args.ip or ()))
        reference = None
        if args.ntp is not None:
            host, port = args.ntp
            reference = partial(sntp_time, host, port)
        doctor = Doctor(setup, DnsLookups(resolver), queue=store.queue_list,
                        reference_time=reference)
        results = await doctor.run()
        show(results, as_json=args.json)
        return EXIT_FAILED if any(r.status is Status.FAIL for r in results) else EXIT_OK

    try:
        return run(config, action)
    except DkimError as exc:
        error(str(exc))
        return EXIT_FAILED


def build_setup(config: Config, domains: Sequence[str],
                public_addresses: tuple[str, ...] = ()) -> DoctorSetup:
    """What the doctor checks against, from the config: for each domain the records
    `dns-records` prints (the DKIM keys read, never made), the certificate `serve` uses, the
    server's public addresses (`public_addresses`, --ip, override the config's)."""
    offered = offered_services(config)
    records = {domain: parse_records(records_for(config, domain, dkim_keys(config).keys(domain)))
               for domain in domains}
    _, cert = presented_certificate(config)
    listeners = tuple(Listener(kind, host, port) for kind in LISTENER_KINDS if kind in offered
                      for host, port in config.listen_endpoints(kind))
    return DoctorSetup(hostname=config.hostname, domains=tuple(domains), records=records,
                       data_dir=config.data_dir, cert_path=cert, listeners=listeners,
                       public_addresses=public_addresses or config.public_addresses)


def show(results: Sequence[CheckResult], *, as_json: bool = False) -> None:
    if as_json:
        out(json.dumps([r.as_json() for r in results], indent=2, ensure_ascii=False))
        return
    table(("STATUS", "CHECK", "FOUND"),
          [(r.status.value.upper(), r.name, r.found) for r in results])
    for r in results:
        if r.status is Status.OK:
            continue
        out("")
        out(f"{r.status.value.upper()} {r.name}: {r.found}")
        if r.why_it_matters:
            out(f"  why: {r.why_it_matters}")
        if r.fix:
            out(f"  fix: {r.fix}")
    counts = {s: sum(r.status is s for r in results) for s in Status}
    out("")
    out(", ".join(f"{counts[s]} {s.value}" for s in Status))

