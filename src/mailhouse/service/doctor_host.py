"""The host side of `mailhouse doctor`: reverse DNS and the SMTP banner, the listeners, the
certificate, disk space, queue age and the clock. Each check takes the `Doctor` (its setup and
injected clock, statvfs, queue listing and reference time) and returns results; none raises.

What a check made from the server itself cannot prove is said so: a port that accepts a
connection from here may still be blocked by a firewall or the hosting provider (many block
port 25 outbound and inbound by default), so the ports check is `skip` at best, with that
explanation, and `fail` only when a listener does not even answer locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509

from mailhouse.service.acme_files import load_state
from mailhouse.service.doctor import (
    CERT_EXPIRY_WARNING,
    CLOCK_SKEW_FAIL,
    CLOCK_SKEW_WARN,
    DISK_FAIL_BYTES,
    DISK_FAIL_FRACTION,
    DISK_WARN_BYTES,
    DISK_WARN_FRACTION,
    QUEUE_AGE_FAIL,
    QUEUE_AGE_WARN,
    CheckResult,
    Doctor,
    Listener,
    Status,
)
from mailhouse.store.base import RecipientStatus

BANNER_MAX: Final = 4096  # octets read of the SMTP greeting line
NTP_PORT: Final = 123
NTP_EPOCH_OFFSET: Final = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01
NTP_PACKET: Final = 48


async def check_ptr(doctor: Doctor) -> list[CheckResult]:
    """Forward-confirmed reverse DNS of each public address: its PTR names the hostname, and
    the hostname resolves back to it (what large receivers require of a sending address)."""
    hostname = doctor.setup.hostname.lower().rstrip(".")
    why = ("Receivers look up the name of the connecting address (PTR) and check that it "
           "resolves back to the same address; many reject or junk mail from an address "
           f"without it, or whose name is not the {hostname} we greet with.")
    addresses = await doctor.server_addresses()
    if not addresses:
        return [CheckResult("ptr", Status.SKIP, "the server's public address is unknown (no "
                            "A/AAAA for the hostname, no --ip)", why,
                            "give the address with `mailhouse doctor --ip ADDRESS`")]
    forward = (await doctor.lookups.addresses(hostname))[1]
    results = []
    for address in addresses:
        name = f"ptr {address}"
        fix = (f"ask whoever gives you {address} (the hosting provider's panel) to set its "
               f"reverse DNS to {hostname}")
        answer = await doctor.lookups.query(address, "PTR")
        names = [r.to_text().lower().rstrip(".") for r in answer.records]
        if not names:
            results.append(CheckResult(name, Status.FAIL, answer.describe("PTR record"), why,
                                       fix))
        elif hostname not in names:
            results.append(CheckResult(name, Status.FAIL, ", ".join(names), why, fix))
        elif address not in forward:
            results.append(CheckResult(
                name, Status.FAIL, f"{hostname}, which does not resolve back to {address}",
                why, f"publish: {hostname}. 3600 IN {_family(address)} {address}"))
        else:
            results.append(CheckResult(name, Status.OK, f"{hostname}, and back"))
    return results


async def check_banner(doctor: Doctor) -> CheckResult:
    """The name in the SMTP greeting (RFC 5321 §4.3.1) is what receivers compare with the PTR;
    reading it from the listener shows what really answers on port 25 (not another MTA)."""
    hostname = doctor.setup.hostname.lower().rstrip(".")
    smtp = [entry for entry in doctor.setup.listeners if entry.kind == "smtp"]
    why = ("The greeting names the server; receivers compare it with the PTR of its address, "
           "and a different name, or another program answering on the SMTP port, means "
           "mail is not handled by mailhouse as configured.")
    if not smtp:
        return CheckResult("smtp banner", Status.SKIP, "no smtp listener configured", why,
                           "set listen.smtp in the config")
    host, port = _local_target(smtp[0], doctor.setup.public_addresses)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                doctor.connect_timeout)
    except (OSError, TimeoutError) as exc:
        return CheckResult("smtp banner", Status.FAIL, f"{host}:{port}: {_reason(exc)}", why,
                           "start the server (`systemctl start mailhouse` or `mailhouse "
                           "serve`) and check its log")
    try:
        line = await asyncio.wait_for(reader.readline(), doctor.connect_timeout)
    except (OSError, TimeoutError) as exc:
        line = f"(no greeting: {_reason(exc)})".encode()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    text = line[:BANNER_MAX].decode("utf-8", "replace").strip()
    words = text[4:].split() if text[:3] == "220" and len(text) > 4 else []
    if not words or words[0].lower().rstrip(".") != hostname:
        return CheckResult("smtp banner", Status.FAIL, f"{host}:{port}: {text!r}", why,
                           f"set `hostname = \"{hostname}\"` in the config, restart, and stop "
                           "any other mail server listening on that port")
    return CheckResult("smtp banner", Status.OK, f"{host}:{port}: {text}")


async def check_ports(doctor: Doctor) -> CheckResult:
    """A connect to every listener, from here. It can only show what does NOT work: from
    inside, a firewall or provider block in front of the server is invisible."""
    why = ("Clients and other servers must reach these ports from the internet; a check from "
           "the server itself cannot prove that (a firewall or the provider, many of which "
           "block port 25, sits in between).")
    hostname = doctor.setup.hostname
    ports = " ".join(str(p) for p in sorted({entry.port for entry in doctor.setup.listeners}))
    fix_outside = (f"test from another network: `for p in {ports or 'PORT'}; do nc -vz "
                   f"{hostname} $p; done`, or an online port checker; open the ports in the "
                   "firewall, and ask the provider to unblock port 25")
    if not doctor.setup.listeners:
        return CheckResult("ports", Status.SKIP, "no listener configured", why, fix_outside)
    targets = [(entry.kind, *_local_target(entry, doctor.setup.public_addresses))
               for entry in doctor.setup.listeners]
    outcomes = await asyncio.gather(*(_connect(host, port, doctor.connect_timeout)
                                      for _, host, port in targets))
    refused = [f"{kind} {host}:{port} ({problem})"
               for (kind, host, port), problem in zip(targets, outcomes, strict=True) if problem]
    accepted = [f"{kind} {port}" for (kind, _, port), problem in zip(targets, outcomes,
                                                                       strict=True)
                if not problem]
    if refused:
        return CheckResult("ports", Status.FAIL, "not answering here: " + ", ".join(refused),
                           why, "start the server (`systemctl start mailhouse`) and check its "
                           "log for listeners that failed to bind")
    return CheckResult("ports", Status.SKIP,
                       "accepting here: " + ", ".join(accepted) + "; reachability from "
                       "outside is not proven by a check from inside", why, fix_outside)


def check_certificate(doctor: Doctor) -> CheckResult:
    """The certificate file, then what ACME renewal last reported (acme_files.RenewalState):
    a renewal failing is a warning while the certificate still serves."""
    result = _check_certificate_file(doctor)
    state = load_state(doctor.setup.data_dir)
    if state is None or not state.failing or result.status is Status.FAIL:
        return result
    since = _iso(state.last_attempt) if state.last_attempt is not None else "?"
    return CheckResult(
        "certificate", Status.WARN,
        f"{result.found}; ACME renewal failing ({state.failures} attempts, last {since}): "
        f"{state.last_error}",
        "The certificate is not renewed: when it expires, clients and verifying senders "
        "refuse it.",
        "the CA must reach this server: port 80 open for HTTP-01 (443 with web.listen for "
        "TLS-ALPN-01) and every name in [acme] resolving here; then `mailhouse cert renew` "
        "or `systemctl reload mailhouse` retries now (docs/operations.md, \"Certificates "
        "from ACME\")")


def _check_certificate_file(doctor: Doctor) -> CheckResult:
    hostname = doctor.setup.hostname.lower().rstrip(".")
    path = doctor.setup.cert_path
    fix_real = ("set [acme] enabled = true to get one from Let's Encrypt (docs/operations.md, "
                "\"Certificates from ACME\"), or configure tls.cert and tls.key with a "
                f"certificate for {hostname} from a CA, then restart")
    if path is None:
        return CheckResult("certificate", Status.WARN, "none yet: the first `serve` makes a "
                           "self-signed one", "Clients and MTA-STS senders verify the "
                           "certificate; a self-signed one is refused by them.", fix_real)
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError) as exc:
        return CheckResult("certificate", Status.FAIL, f"{path}: {_reason(exc)}",
                           "Without a readable certificate TLS fails: clients cannot log in "
                           "and senders that require TLS do not deliver.", fix_real)
    now = doctor.clock()
    after = cert.not_valid_after_utc.timestamp()
    before = cert.not_valid_before_utc.timestamp()
    until = f"valid until {_iso(after)}"
    names = _dns_names(cert)
    if now >= after:
        return CheckResult("certificate", Status.FAIL, f"{path}: expired on {_iso(after)}",
                           "Clients refuse an expired certificate and senders requiring TLS "
                           "(MTA-STS, DANE) stop delivering.", "renew it; " + fix_real)
    if now < before:
        return CheckResult("certificate", Status.FAIL,
                           f"{path}: not valid before {_iso(before)}",
                           "Clients refuse a certificate that is not valid yet (or this "
                           "server's clock is wrong).", "check the clock (timedatectl), or "
                           + fix_real)
    if not any(_name_matches(pattern, hostname) for pattern in names):
        return CheckResult("certificate", Status.FAIL,
                           f"{path}: for {', '.join(names) or 'no DNS name'}, not {hostname}",
                           "Clients and verifying senders check that the certificate names "
                           "the host they connect to (RFC 6125 §6.4).", fix_real)
    if after - now < CERT_EXPIRY_WARNING:
        days = (after - now) / 86400
        return CheckResult("certificate", Status.WARN, f"{path}: expires in {days:.0f} days "
                           f"({_iso(after)})", "It must be renewed before it expires, or "
                           "clients and verifying senders are refused.", "renew it now; "
                           "a renewal that keeps failing needs attention")
    if cert.issuer == cert.subject:
        return CheckResult("certificate", Status.WARN, f"{path}: self-signed, {until}",
                           "Mail clients warn about a self-signed certificate and senders "
                           "using MTA-STS or DANE refuse it; opportunistic TLS still works.",
                           fix_real)
    return CheckResult("certificate", Status.OK, f"{path}: {until}, names {hostname}")


def check_disk(doctor: Doctor) -> CheckResult:
    directory = _existing(doctor.setup.data_dir)
    why = ("When data_dir's file system fills up, incoming mail is refused with a temporary "
           "error and the queue stops; the store needs room to commit.")
    fix = (f"free space on the file system of {directory} (old logs, `mailhouse user quota`), "
           "or move data_dir to a larger disk")
    try:
        st = doctor.statvfs(directory)
    except OSError as exc:
        return CheckResult("disk", Status.FAIL, f"{directory}: {_reason(exc)}", why, fix)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    share = free / total if total else 0.0
    found = f"{directory}: {_size(free)} free of {_size(total)} ({share:.0%})"
    if free < DISK_FAIL_BYTES or share < DISK_FAIL_FRACTION:
        return CheckResult("disk", Status.FAIL, found, why, fix)
    if free < DISK_WARN_BYTES or share < DISK_WARN_FRACTION:
        return CheckResult("disk", Status.WARN, found, why, fix)
    return CheckResult("disk", Status.OK, found)


async def check_queue_age(doctor: Doctor) -> CheckResult:
    why = ("Mail waiting this long is not reaching its recipients: a remote server refuses "
           "it, or this one cannot connect out (port 25 blocked?).")
    fix = ("read the last replies with `mailhouse queue list`; after fixing the cause, "
           "`mailhouse queue flush`")
    if doctor.queue is None:
        return CheckResult("queue age", Status.SKIP, "the queue was not read", why, fix)
    try:
        messages = await doctor.queue()
    except Exception as exc:  # the store's own errors (MailError, OSError) are reported
        return CheckResult("queue age", Status.FAIL, f"the queue cannot be read: {exc}", why,
                           "check the store: `mailhouse queue list`")
    pending = [m for m in messages
               if any(r.status is RecipientStatus.PENDING for r in m.recipients)]
    if not pending:
        return CheckResult("queue age", Status.OK, "no message waiting")
    oldest = min(pending, key=lambda m: m.created)
    age = doctor.clock() - oldest.created
    found = (f"{len(pending)} waiting; the oldest (id {oldest.id}) for "
             f"{_duration(age)}")
    if age > QUEUE_AGE_FAIL:
        return CheckResult("queue age", Status.FAIL, found, why, fix)
    if age > QUEUE_AGE_WARN:
        return CheckResult("queue age", Status.WARN, found, why, fix)
    return CheckResult("queue age", Status.OK, found)


async def check_clock(doctor: Doctor) -> CheckResult:
    why = ("A wrong clock makes certificates look expired or not yet valid, DKIM signatures "
           "look stale, and log times useless.")
    fix = "enable time synchronisation: `timedatectl set-ntp true` (systemd-timesyncd, chrony)"
    if doctor.reference_time is None:
        return CheckResult("clock", Status.SKIP, "no reference given (--ntp SERVER)", why,
                           "compare with a time server: `mailhouse doctor --ntp pool.ntp.org`")
    try:
        reference = await doctor.reference_time()
    except (OSError, TimeoutError, ValueError) as exc:
        return CheckResult("clock", Status.SKIP, f"the reference did not answer: "
                           f"{_reason(exc)}", why, "try another time server")
    skew = doctor.clock() - reference
    found = f"{skew:+.3f} s from the reference"
    if abs(skew) > CLOCK_SKEW_FAIL:
        return CheckResult("clock", Status.FAIL, found, why, fix)
    if abs(skew) > CLOCK_SKEW_WARN:
        return CheckResult("clock", Status.WARN, found, why, fix)
    return CheckResult("clock", Status.OK, found)


async def sntp_time(host: str, port: int = NTP_PORT, timeout: float = 5.0) -> float:
    """The time at a (S)NTP server (RFC 4330 §5), corrected by half the round trip."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
            if not received.done():
                received.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not received.done():
                received.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=(host, port))
    try:
        sent = time.time()
        transport.sendto(b"\x23" + bytes(NTP_PACKET - 1))  # LI 0, version 4, mode 3 (client)
        data = await asyncio.wait_for(received, timeout)
        back = time.time()
    finally:
        transport.close()
    if len(data) < NTP_PACKET or data[0] & 0x07 not in (4, 5):  # mode server / broadcast
        raise ValueError("not an NTP reply")
    seconds, fraction = struct.unpack("!II", data[40:48])  # the transmit timestamp
    seconds, fraction = int(seconds), int(fraction)
    if seconds == 0:
        raise ValueError("the server is not synchronised")
    return seconds - NTP_EPOCH_OFFSET + fraction / 2**32 + (back - sent) / 2


# --- helpers ----------------------------------------------------------------------------------

def _local_target(listener: Listener, public: tuple[str, ...]) -> tuple[str, int]:
    """Where to connect to reach a listener from here: a wildcard listener at the declared
    public address of its family (else loopback), a specific one at its own address."""
    try:
        ip = ipaddress.ip_address(listener.host)
    except ValueError:
        return listener.host, listener.port
    if not ip.is_unspecified:
        return listener.host, listener.port
    same_family = [a for a in public if ipaddress.ip_address(a).version == ip.version]
    if same_family:
        return same_family[0], listener.port
    return ("127.0.0.1" if ip.version == 4 else "::1"), listener.port


async def _connect(host: str, port: int, timeout: float) -> str:
    """"" when a TCP connection was accepted, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return _reason(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ""


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []  # RFC 6125 §6.4.4: a client does not fall back to the CN when SANs exist;
        # modern clients no longer read the CN at all, so a certificate without SANs matches none
    return [name.lower() for name in san.value.get_values_for_type(x509.DNSName)]


def _name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 §6.4.3: a "*" only as the whole left-most label, matching exactly one label."""
    if pattern.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern.rstrip(".") == hostname


def _family(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, socket.gaierror):
        return str(exc)
    return str(exc) or type(exc).__name__


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(octets: int) -> str:
    value = float(octets)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
