"""`mailhouse dns-records DOMAIN`, and the DKIM key hook of `mailhouse domain add`.

A domain is only usable for sending once the world can check it: its MX, SPF, DKIM and DMARC
records (and, for mail clients, the RFC 6186 SRV records) must be published by whoever runs its
DNS zone. This command prints all of them, ready to paste into a zone file, so the operator
never has to assemble a DKIM record by hand. `--zone` prints the same records as an RFC 1035 §5
master-file fragment (absolute names, an explicit TTL, class IN) to `$INCLUDE` or paste into a
zone, and `mailhouse doctor` checks the DNS against exactly these records. Records go to stdout
and remarks to stderr, so `mailhouse dns-records example.org >> zone` stays clean.

Keys are made when the domain is added (`on_domain_added`, called by `domain add`), so mail
is signed from the first message; `dns-records` makes them too if they are missing (a domain
added before DKIM existed, or a failed first attempt).

Same conventions as __main__: exit 0 done, 1 the operation failed, 2 usage error; one line on
stderr, never a traceback. This module is imported by __main__ (which wires `register`), so it
must not import __main__ back.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from mailhouse.cli_common import become_data_dir_owner as _become_data_dir_owner
from mailhouse.cli_common import error as _error
from mailhouse.cli_common import out as _out
from mailhouse.config import LISTENER_KINDS, Config
from mailhouse.errors import MailError
from mailhouse.message.dkim import DkimError, DkimKey, DkimKeys, dns_records
from mailhouse.service.accounts import InvalidInput, canonical_domain
from mailhouse.service.doctor_dns import ZONE_TTL, parse_records, zone_fragment

DKIM_DIR: Final = "dkim"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add `dns-records DOMAIN`. Pass __main__'s `common` parser in `parents` so --config is
    accepted after the command word too, as for every other command."""
    p = subparsers.add_parser(
        "dns-records", parents=list(parents),
        help="print the DNS records to publish for DOMAIN (MX, SPF, DKIM, DMARC, SRV)",
        description="Print, ready to paste into DOMAIN's zone file, every record it needs: MX, "
                    "SPF, DKIM (the keys are made now if DOMAIN has none), DMARC, and the "
                    "SRV/autoconfig records mail clients use to find the server.")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--zone", action="store_true",
                   help="print a zone-file fragment (RFC 1035 §5: absolute names, TTL, "
                        "class IN) to include in the domain's zone")
    p.set_defaults(handler=dns_records_command)


def dkim_keys(config: Config) -> DkimKeys:
    """The DKIM key directory of this installation (data_dir/dkim)."""
    return DkimKeys(config.data_dir / DKIM_DIR)


def on_domain_added(config: Config, domain: str) -> None:
    """Make the domain's DKIM keys (called by `domain add` once the domain is stored).

    Never raises: the domain is added either way, and a failure here is reported with the
    command that retries it, rather than turning a successful `domain add` into an error."""
    try:
        keys = dkim_keys(config).ensure(domain)
    except (DkimError, OSError, ValueError) as exc:
        _error(f"warning: could not make DKIM keys for {domain}: {_describe(exc)}; "
               f"`mailhouse dns-records {domain}` tries again")
        return
    selectors = ", ".join(key.selector for key in keys)
    _out(f"DKIM keys for {domain}: {selectors}; publish them with the records from "
         f"`mailhouse dns-records {domain}`")


def dns_records_command(args: argparse.Namespace, config: Config) -> int:
    try:
        domain = canonical_domain(args.domain)
    except InvalidInput as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        _become_data_dir_owner(config)
        hosted = asyncio.run(_hosted_domains(config.data_dir))
        if domain not in hosted:
            _error(f"{domain} is not one of our domains (add it with "
                   f"`mailhouse domain add {domain}`)")
            return EXIT_FAILED
        keys = dkim_keys(config).ensure(domain)
    except MailError as exc:
        _error(f"storage error: {exc.reply.text}")
        return EXIT_FAILED
    except (DkimError, OSError) as exc:
        _error(_describe(exc))
        return EXIT_FAILED
    if config.hostname == "localhost" or "." not in config.hostname:
        _error(f"warning: hostname is {config.hostname!r}; set `hostname` in the config to "
               "the server's public name, or these records point nowhere")
    if not config.dkim.enabled:
        _error("note: dkim.enabled = false in the config: mail is not signed until it is "
               "true")
    lines = records_for(config, domain, keys)
    if getattr(args, "zone", False):
        # The same records, parsed and printed again with a TTL (doctor_dns.zone_fragment).
        _out(f"; zone fragment for {domain}, served by {config.hostname}; TTL {ZONE_TTL} s")
        lines = zone_fragment(parse_records(lines))
    else:
        _out(f"; DNS records for {domain}, served by {config.hostname}")
    for line in lines:
        _out(line)
    return EXIT_OK


def records_for(config: Config, domain: str, keys: Sequence[DkimKey]) -> list[str]:
    """`dns_records` for `domain` as this config serves it: the offered services, the MTA-STS
    policy's id when the web listener serves one. Every face (this command, the doctor, the
    admin API and pages) prints the records through here, so they never disagree."""
    from mailhouse.service.mta_sts import policy_id

    return dns_records(domain, config.hostname, keys, offered_services(config),
                       mta_sts_id=policy_id(config))


def offered_services(config: Config) -> frozenset[str]:
    """The listener kinds `serve` answers on with this config: built, with an address. The
    SRV records advertise these and mark the others "not available" (RFC 6186 §4)."""
    from mailhouse.app import NOT_BUILT  # the server's modules only when the command runs

    return frozenset(kind for kind in LISTENER_KINDS
                     if kind not in NOT_BUILT and config.listen_endpoints(kind))


async def _hosted_domains(data_dir: Path) -> frozenset[str]:
    from mailhouse.store import open_store  # the store only when the command runs

    store = open_store(data_dir)
    await store.open()
    try:
        return (await store.directory()).domains
    finally:
        await store.close()


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)
