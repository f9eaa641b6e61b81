"""TOML → a frozen dataclass tree, validated once at start-up and passed down explicitly.

Everything an operator can get wrong is caught here, before a socket is bound, with a message
that names the key (`limits.max_recipients: expected an integer >= 1, got 'abc'`). Inside, the
server trusts the types: no component re-checks its settings.

Two sets of defaults exist on purpose:
- with no config file, the *try-it-now* defaults: everything under ./mailhouse-data, every
  listener on 127.0.0.1 at its standard port + 10000 (no root needed, nothing exposed), and
  `demo = true`, so `mailhouse serve` works as a first experiment;
- with a file, production defaults: standard ports on all addresses, /var/lib/mailhouse, no demo.
A config file is a deliberate act; silently keeping toy defaults then would surprise.

Each setting declares its check next to its default (`metadata=checked(check)`): a section's
dataclass *is* its schema, and the loader below is generic. The section dataclasses live here
rather than beside each component (DESIGN.md's plan) while those components are young; they can
move next to their code and be re-exported from here without changing a name.

Relative paths in a file are relative to the file's own directory, so a server started from any
working directory (systemd starts in /) finds the same files.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from mailhouse.errors import ConfigError
from mailhouse.model import AddressError, normalize_domain

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    D = TypeVar("D", bound=DataclassInstance)
else:
    D = TypeVar("D")

ENV_CONFIG: Final = "MAILHOUSE_CONFIG"
LISTENER_KINDS: Final = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
STANDARD_PORTS: Final = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
}
# Try-it-now listeners: standard port + this, on loopback, so no root and no exposure.
TRY_IT_NOW_PORT_OFFSET: Final = 10000
TRY_IT_NOW_DATA_DIR: Final = "mailhouse-data"
PRODUCTION_DATA_DIR: Final = "/var/lib/mailhouse"
DNS_PORT: Final = 53
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# Where the outbound queue runs: its own process beside the listeners' (default), or on the
# listeners' event loop (docs/decisions.md, "How mailhouse uses the two cores").
QUEUE_PROCESS_MODES: Final = ("separate", "inline")

# RFC 5321 §4.5.3.1.4 / §4.5.3.1.6: servers must accept command lines of 512 octets and text
# lines of 1000 octets (both including CRLF); smaller limits would refuse legal mail.
MIN_COMMAND_LINE: Final = 512
MIN_TEXT_LINE: Final = 1000
# RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients. Lower values are allowed
# (tests want them) but draw a warning.
RFC_MIN_RECIPIENTS: Final = 100
# RFC 5321 §4.5.3.2.7: the server timeout awaiting a command should be at least 5 minutes.
RFC_MIN_IDLE_TIMEOUT: Final = 300.0
# RFC 9051 §5.4: an IMAP server's inactivity autologout timer is at least 30 minutes.
IMAP_MIN_IDLE_TIMEOUT: Final = 1800.0

Check = Callable[[str, object], Any]
_CHECK: Final = "mailhouse.config.check"
_SECTION: Final = "mailhouse.config.section"


def checked(check: Check) -> dict[str, Check]:
    """Field metadata making a field a config key: `check` turns raw TOML into the typed value
    (or raises ConfigError naming the key)."""
    return {_CHECK: check}


def _section(cls: type[Any]) -> dict[str, type[Any]]:
    return {_SECTION: cls}


# --- value checks: raw TOML value in, typed value out, ConfigError naming the key otherwise ----

def _show(value: object) -> str:
    """The offending value as the operator wrote it (TOML spelling), for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _wrong(key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {_show(value)}")


def _integer(minimum: int, maximum: int | None = None) -> Check:
    expected = f"an integer >= {minimum}" if maximum is None else (
        f"an integer from {minimum} to {maximum}")

    def check(key: str, value: object) -> int:
        # TOML booleans arrive as Python bools, which are ints: refuse them explicitly.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(key, expected, value)
        if value < minimum or (maximum is not None and value > maximum):
            raise _wrong(key, expected, value)
        return value

    return check


def default_pop3_workers() -> int:
    """`[pop3] workers` and `[imap] workers` when unset: one per CPU."""
    return max(1, os.cpu_count() or 1)


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(key, "a number of seconds > 0", value)
    if not math.isfinite(value) or value <= 0:
        raise _wrong(key, "a number of seconds > 0", value)
    return float(value)


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


def _hostname(key: str, value: object) -> str:
    expected = "a host name such as \"mx.example.test\""
    if not isinstance(value, str):
        raise _wrong(key, expected, value)
    try:
        name = normalize_domain(value)
    except AddressError:
        raise _wrong(key, expected, value) from None
    if name.startswith("["):
        raise _wrong(key, expected, value)
    return name


def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _wrong(key, "a path", value)
    return Path(value).expanduser()


def _user(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in ":/\0\n") or (
            value != value.strip()):
        raise _wrong(key, "a system user name", value)
    return value


def _integer_or_float_zero(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(key, "a number of seconds >= 0", value)
    if not math.isfinite(value) or value < 0:
        raise _wrong(key, "a number of seconds >= 0", value)
    return float(value)


def _log_level(key: str, value: object) -> str:
    expected = "one of " + ", ".join(f'"{level}"' for level in LOG_LEVELS)
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise _wrong(key, expected, value)
    return value.lower()


LOG_FORMATS = ("auto", "text", "json")


def _log_format(key: str, value: object) -> str:
    expected = "one of " + ", ".join(f'"{fmt}"' for fmt in LOG_FORMATS)
    if not isinstance(value, str) or value.lower() not in LOG_FORMATS:
        raise _wrong(key, expected, value)
    return value.lower()


MTA_STS_MODES = ("testing", "enforce", "none")  # RFC 8461 §5


def _mta_sts_mode(key: str, value: object) -> str:
    expected = "one of " + ", ".join(f'"{mode}"' for mode in MTA_STS_MODES)
    if not isinstance(value, str) or value.lower() not in MTA_STS_MODES:
        raise _wrong(key, expected, value)
    return value.lower()


def _queue_process(key: str, value: object) -> str:
    expected = "one of " + ", ".join(f'"{mode}"' for mode in QUEUE_PROCESS_MODES)
    if not isinstance(value, str) or value not in QUEUE_PROCESS_MODES:
        raise _wrong(key, expected, value)
    return value


def _plus_separator(key: str, value: object) -> str:
    """One punctuation character allowed in a local part (RFC 5322 atext), or "" for none.

    Letters and digits would split ordinary names; '@', quotes and spaces are not atext."""
    expected = 'one character such as "+" or "-", or "" to disable'
    if not isinstance(value, str) or len(value) > 1:
        raise _wrong(key, expected, value)
    if value and (not value.isascii() or value.isalnum() or value not in "!#$%&'*+-/=?^_`{|}~."):
        raise _wrong(key, expected, value)
    return value


def parse_endpoint(text: str) -> tuple[str, int]:
    """"host:port" → (host, port); IPv6 literals in brackets ("[::1]:25"). Port 0 lets the
    kernel choose (tests use it). Raises ValueError naming the problem."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError('write IPv6 addresses as "[::1]:25"')
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError('expected "host:port"')
        if ":" in host:
            raise ValueError('write IPv6 addresses in brackets, as "[::1]:25"')
        if all(c.isdigit() or c == "." for c in host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        else:
            try:
                host = normalize_domain(host)
            except AddressError:
                raise ValueError(f"{host!r} is not a host name or address") from None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"{port_text!r} is not a port number (0-65535)")
    return host, int(port_text)


def parse_nameserver(text: str) -> tuple[str, int]:
    """A resolver address: "ip", "ip:port", "::1" or "[::1]:port"; port 53 when absent."""
    try:
        return str(ipaddress.ip_address(text)), DNS_PORT
    except ValueError:
        pass
    if text.startswith("[") and text.endswith("]"):
        host, port = text[1:-1], DNS_PORT
        ipaddress.IPv6Address(host)
        return host, port
    host, port = parse_endpoint(text)
    ipaddress.ip_address(host)  # a resolver needs an address, not a name to resolve
    if port == 0:
        raise ValueError("port 0 is not a resolver port")
    return host, port


def _string_list(key: str, value: object, parse: Callable[[str], object], expected: str) -> tuple[
        str, ...]:
    if not isinstance(value, list):
        raise _wrong(key, f"a list of {expected}", value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _wrong(f"{key}[{i}]", expected, item)
        try:
            parse(item)
        except ValueError as exc:
            raise ConfigError(f"{key}[{i}]: {exc}, got {item!r}") from None
    return tuple(value)


def _endpoints(key: str, value: object) -> tuple[str, ...]:
    return _string_list(key, value, parse_endpoint, '"host:port" strings')


def _public_address(text: str) -> str:
    address = ipaddress.ip_address(text)
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        raise ValueError("not an address the internet reaches this server at")
    return str(address)


def _public_addresses(key: str, value: object) -> tuple[str, ...]:
    """Canonical forms (`2001:db8::1`, not `2001:0db8::0001`), so comparisons hold."""
    texts = _string_list(key, value, _public_address, "IPv4 or IPv6 addresses")
    return tuple(dict.fromkeys(_public_address(text) for text in texts))


def _nameservers(key: str, value: object) -> tuple[str, ...]:
    return _string_list(key, value, parse_nameserver, 'addresses such as "127.0.0.1:5353"')


# --- the tree ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Listening sockets per protocol; an empty tuple disables that listener."""

    smtp: tuple[str, ...] = field(default=("0.0.0.0:25",), metadata=checked(_endpoints))
    submission: tuple[str, ...] = field(default=("0.0.0.0:587",), metadata=checked(_endpoints))
    submissions: tuple[str, ...] = field(default=("0.0.0.0:465",), metadata=checked(_endpoints))
    imap: tuple[str, ...] = field(default=("0.0.0.0:143",), metadata=checked(_endpoints))
    imaps: tuple[str, ...] = field(default=("0.0.0.0:993",), metadata=checked(_endpoints))
    pop3: tuple[str, ...] = field(default=("0.0.0.0:110",), metadata=checked(_endpoints))
    pop3s: tuple[str, ...] = field(default=("0.0.0.0:995",), metadata=checked(_endpoints))

    @classmethod
    def try_it_now(cls) -> ListenConfig:
        return cls(**{kind: (f"127.0.0.1:{STANDARD_PORTS[kind] + TRY_IT_NOW_PORT_OFFSET}",)
                      for kind in LISTENER_KINDS})

    def endpoints(self, kind: str) -> list[tuple[str, int]]:
        if kind not in LISTENER_KINDS:
            raise ValueError(f"unknown listener kind {kind!r}")
        texts: tuple[str, ...] = getattr(self, kind)
        return [parse_endpoint(text) for text in texts]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Certificate chain and key (PEM). Both None: the app makes a self-signed certificate for
    `hostname` once, in data_dir, so STARTTLS and implicit TLS work out of the box."""

    cert: Path | None = field(default=None, metadata=checked(_path))
    key: Path | None = field(default=None, metadata=checked(_path))


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Resolvers for MX/SPF/DKIM lookups; empty means the system resolver (/etc/resolv.conf)."""

    nameservers: tuple[str, ...] = field(default=(), metadata=checked(_nameservers))

    def addresses(self) -> list[tuple[str, int]]:
        return [parse_nameserver(text) for text in self.nameservers]


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Resource bounds. Slow clients are bounded by connection caps and `session_lifetime`, not
    by short timeouts (RFC 5321 §4.5.3.2 timeouts are minimums; docs/decisions.md, issue 7)."""

    # Bytes, advertised as EHLO SIZE (RFC 1870).
    max_message_size: int = field(default=52_428_800, metadata=checked(_integer(1)))
    max_recipients: int = field(default=100, metadata=checked(_integer(1)))
    max_connections: int = field(default=1000, metadata=checked(_integer(1)))
    max_connections_per_ip: int = field(default=100, metadata=checked(_integer(1)))
    max_command_line: int = field(default=512, metadata=checked(_integer(MIN_COMMAND_LINE)))
    max_text_line: int = field(default=1000, metadata=checked(_integer(MIN_TEXT_LINE)))
    idle_timeout: float = field(default=300.0, metadata=checked(_seconds))
    data_timeout: float = field(default=180.0, metadata=checked(_seconds))
    session_lifetime: float = field(default=3600.0, metadata=checked(_seconds))
    max_errors: int = field(default=20, metadata=checked(_integer(1)))
    # A transport no peer can pin (docs/decisions.md). Writes paused this long (the peer does
    # not read): the connection is aborted. Also ends a stuck download and frees its maildrop.
    write_stall_timeout: float = field(default=60.0, metadata=checked(_seconds))
    # Implicit TLS (465, 995) and STARTTLS/STLS handshakes.
    tls_handshake_timeout: float = field(default=10.0, metadata=checked(_seconds))
    # From the first byte of a command line to its LF (a trickle of bytes keeps no session).
    command_line_timeout: float = field(default=60.0, metadata=checked(_seconds))
    # From the connection to EHLO/HELO (SMTP) and to a successful login (POP3).
    helo_timeout: float = field(default=60.0, metadata=checked(_seconds))
    login_timeout: float = field(default=120.0, metadata=checked(_seconds))
    # Per service (MX = smtp; submission = submission + submissions; pop3 = pop3 + pop3s;
    # imap = imap + imaps). Unset: a service's total is its share of max_connections among the
    # enabled services (MX 2, submission 1, POP3 1, IMAP 4), its per-address cap is
    # max_connections_per_ip.
    smtp_max_connections: int | None = field(default=None, metadata=checked(_integer(1)))
    smtp_max_connections_per_ip: int | None = field(default=None,
                                                    metadata=checked(_integer(1)))
    submission_max_connections: int | None = field(default=None, metadata=checked(_integer(1)))
    submission_max_connections_per_ip: int | None = field(default=None,
                                                          metadata=checked(_integer(1)))
    pop3_max_connections: int | None = field(default=None, metadata=checked(_integer(1)))
    pop3_max_connections_per_ip: int | None = field(default=None,
                                                    metadata=checked(_integer(1)))
    imap_max_connections: int | None = field(default=None, metadata=checked(_integer(1)))
    imap_max_connections_per_ip: int | None = field(default=None,
                                                    metadata=checked(_integer(1)))
    # NOOP, RSET, EHLO… (SMTP) and CAPA, NOOP, STAT… (POP3) before each further one counts
    # toward max_errors too (Postfix's smtpd_junk_command_limit); forgiven after real work.
    junk_command_limit: int = field(default=100, metadata=checked(_integer(0)))


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    # "" disables plus-addressing (user+tag@domain delivered to user@domain).
    plus_separator: str = field(default="+", metadata=checked(_plus_separator))
    # More Received fields than this means a loop: 554 5.4.6. Postfix's hopcount_limit is 50;
    # RFC 5321 §6.3 suggests at least 100, so raise it if legitimate mail hits the limit.
    max_received_headers: int = field(default=50, metadata=checked(_integer(1)))


def _sender_grants(key: str, value: object) -> dict[str, tuple[str, ...]]:
    """{"login@example.org" = ["other@example.org", "@example.org"]}: extra envelope senders
    and From addresses a login may use beyond its own address and its aliases."""
    expected = 'a table of "login address" = ["address or @domain", …]'
    if not isinstance(value, dict):
        raise _wrong(key, expected, value)
    out: dict[str, tuple[str, ...]] = {}
    for login, grants in value.items():
        if not isinstance(grants, list) or not all(isinstance(g, str) and g for g in grants):
            raise _wrong(f"{key}.{login}", 'a list of addresses or "@domain"', grants)
        out[str(login).lower()] = tuple(g.lower() for g in grants)
    return out


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """Authenticated submission (ports 587/465, RFC 6409, RFC 8314) and the login throttle
    shared by every protocol that takes passwords."""

    # Failed logins from one IP, or against one account, within `auth_failure_window` seconds
    # before further attempts are refused (454 4.7.0 / 535) until the window passes.
    auth_failure_limit: int = field(default=10, metadata=checked(_integer(1)))
    auth_failure_window: float = field(default=900.0, metadata=checked(_seconds))
    # Each failed attempt is answered only after this many seconds (slows guessing).
    auth_failure_delay: float = field(default=1.0, metadata=checked(_seconds))
    # A key has (limit - recent failures) password checks in flight at most; a login that finds
    # no free slot waits this long for one (first come, first served), then is refused.
    auth_queue_timeout: float = field(default=10.0, metadata=checked(_seconds))
    senders: dict[str, tuple[str, ...]] = field(default_factory=dict,
                                                 metadata=checked(_sender_grants))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Outbound queue scheduling, as Postfix's qmgr: exponential backoff between
    `min_backoff` and `max_backoff`, give up after `max_lifetime` (RFC 5321 §4.5.4.1)."""

    min_backoff: float = field(default=300.0, metadata=checked(_seconds))
    max_backoff: float = field(default=14_400.0, metadata=checked(_seconds))
    max_lifetime: float = field(default=432_000.0, metadata=checked(_seconds))  # 5 days
    # Send the sender a "delayed" notice once a message has waited this long; 0 disables.
    delay_warning: float = field(default=14_400.0, metadata=checked(_integer_or_float_zero))
    max_concurrency: int = field(default=100, metadata=checked(_integer(1)))
    destination_concurrency: int = field(default=20, metadata=checked(_integer(1)))
    # How long a claimed message is kept from every other claimer (queue/worker.py): longer
    # than a round to one host takes at the RFC 5321 §4.5.3.2 timeouts, about 30 minutes.
    claim_lease: float = field(default=3600.0, metadata=checked(_seconds))
    # "separate": `serve` runs the queue (scheduler, outbound SMTP, bounces) in a child process
    # with its own event loop; "inline": on the listeners' loop, in one process.
    process: str = field(default="separate", metadata=checked(_queue_process))


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The outbound SMTP client (RFC 5321 §4.5.3.2 timeouts are the client's minimums)."""

    port: int = field(default=25, metadata=checked(_integer(1, 65535)))
    connect_timeout: float = field(default=30.0, metadata=checked(_seconds))
    command_timeout: float = field(default=300.0, metadata=checked(_seconds))
    # The wait for the reply to the final dot: 10 minutes (RFC 5321 §4.5.3.2.6).
    data_timeout: float = field(default=600.0, metadata=checked(_seconds))
    # How long an idle connection is kept for the next message to the same host.
    connection_reuse_time: float = field(default=5.0, metadata=checked(_seconds))


@dataclass(frozen=True, slots=True)
class DkimConfig:
    """DKIM signing of submitted mail (RFC 6376); keys are made per domain on `domain add`."""

    enabled: bool = field(default=True, metadata=checked(_boolean))


def _pop3_timeout(key: str, value: object) -> float:
    # RFC 1939 §3: the inactivity autologout timer MUST be at least 10 minutes.
    seconds = _seconds(key, value)
    if seconds < 600:
        raise _wrong(key, "a number of seconds >= 600 (RFC 1939 §3)", value)
    return seconds


@dataclass(frozen=True, slots=True)
class Pop3Config:
    """POP3 (RFC 1939) on the `pop3` (STLS) and `pop3s` (implicit TLS) listeners."""

    idle_timeout: float = field(default=600.0, metadata=checked(_pop3_timeout))
    # USER/PASS and AUTH before STLS on port 110. Off: passwords never cross in cleartext.
    allow_plaintext_auth: bool = field(default=False, metadata=checked(_boolean))
    # Processes serving the pop3/pop3s listeners under `serve`: 1 = in the main process; more =
    # that many supervised children sharing the listening sockets (worker_process.py).
    workers: int = field(default_factory=default_pop3_workers, metadata=checked(_integer(1)))


def _imap_timeout(key: str, value: object) -> float:
    # RFC 9051 §5.4: the autologout timer of an authenticated session MUST be at least 30
    # minutes (before login, limits.login_timeout applies).
    seconds = _seconds(key, value)
    if seconds < IMAP_MIN_IDLE_TIMEOUT:
        raise _wrong(key, f"a number of seconds >= {IMAP_MIN_IDLE_TIMEOUT:g} (RFC 9051 §5.4)",
                     value)
    return seconds


@dataclass(frozen=True, slots=True)
class ImapConfig:
    """IMAP (RFC 9051, RFC 3501) on the `imap` (STARTTLS) and `imaps` (implicit TLS)
    listeners."""

    # Seconds of silence from a logged-in client (IDLE included) before autologout.
    idle_timeout: float = field(default=IMAP_MIN_IDLE_TIMEOUT, metadata=checked(_imap_timeout))
    # LOGIN and AUTHENTICATE before STARTTLS on port 143. Off: LOGINDISABLED is announced and
    # passwords never cross in cleartext (RFC 9051 §6.2.3, RFC 8314).
    allow_plaintext_auth: bool = field(default=False, metadata=checked(_boolean))
    # Processes serving the imap/imaps listeners under `serve`, as [pop3] workers.
    workers: int = field(default_factory=default_pop3_workers, metadata=checked(_integer(1)))
    # Octets of one APPENDed message (APPENDLIMIT, RFC 7889). Unset: limits.max_message_size,
    # so what the server would accept by SMTP a client can also store.
    append_limit: int | None = field(default=None, metadata=checked(_integer(1)))
    # Messages read from the store per round of a FETCH or SEARCH (bounds a session's memory).
    fetch_batch: int = field(default=500, metadata=checked(_integer(1)))
    # Messages one body/text SEARCH may decode before it answers NO [LIMIT].
    search_content_limit: int = field(default=100_000, metadata=checked(_integer(1)))
    # Live SEARCH/SORT results (RFC 5267 UPDATE) one session may hold; at least 1 (§4.3.1).
    max_search_updates: int = field(default=16, metadata=checked(_integer(1)))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = field(default="info", metadata=checked(_log_level))
    # "text": key=value lines; "json": one JSON object a line; "auto": text on a terminal,
    # JSON otherwise (a journal, a container's log collector, a file).
    format: str = field(default="auto", metadata=checked(_log_format))


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """The message trace (docs/operations.md, "Message trace")."""

    # Days a message's steps are kept; older ones are pruned every hour. 30: past the queue's
    # 5-day lifetime and a month of "where did my mail go?", at about 1 KB a message.
    keep_days: int = field(default=30, metadata=checked(_integer(1)))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The HTTPS server of the operating side (issue 9): today /healthz/live and
    /healthz/ready. Off unless listed: the admin API that will join it needs its accounts first
    (docs/operations.md, "Health checks")."""

    listen: tuple[str, ...] = field(default=(), metadata=checked(_endpoints))

    def endpoints(self) -> list[tuple[str, int]]:
        return [parse_endpoint(text) for text in self.listen]


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The public HTTPS server mail clients configure themselves from (autoconfig,
    autodiscover, the Apple profile). Off unless listed: port 443 is often another web
    server's (docs/operations.md, "Mail client autoconfiguration")."""

    listen: tuple[str, ...] = field(default=(), metadata=checked(_endpoints))

    def endpoints(self) -> list[tuple[str, int]]:
        return [parse_endpoint(text) for text in self.listen]


@dataclass(frozen=True, slots=True)
class MtaStsConfig:
    """The MTA-STS policy (RFC 8461) served for every hosted domain by the web listener
    (docs/operations.md, "MTA-STS"). "testing" by default: senders then only report (TLS-RPT)
    what "enforce" would refuse, so a certificate problem never bounces mail to us unnoticed."""

    mode: str = field(default="testing", metadata=checked(_mta_sts_mode))
    # RFC 8461 §3.2: at most 31557600 (a year); a week lets a change reach senders soon.
    max_age: int = field(default=604800, metadata=checked(_integer(86400, 31557600)))


# --- [acme]: certificates from an ACME CA (RFC 8555) ------------------------------------------

LETS_ENCRYPT_DIRECTORY: Final = "https://acme-v02.api.letsencrypt.org/directory"
ACME_CHALLENGES: Final = ("http-01", "tls-alpn-01")
MAX_ACME_NAMES: Final = 100  # Let's Encrypt's limit of names in one certificate


def _https_url(key: str, value: object) -> str:
    # RFC 8555 §6.1: ACME is spoken over HTTPS only.
    expected = 'an https:// URL such as "https://acme.example/directory"'
    if not isinstance(value, str) or not value.startswith("https://") or len(value) <= 8 or any(
            c.isspace() or c == "\0" for c in value):
        raise _wrong(key, expected, value)
    return value


def _email(key: str, value: object) -> str:
    expected = 'an e-mail address such as "postmaster@example.com"'
    if not isinstance(value, str) or value.count("@") != 1 or any(
            c.isspace() or ord(c) < 32 for c in value):
        raise _wrong(key, expected, value)
    local, domain = value.split("@")
    try:
        normalize_domain(domain)
    except AddressError:
        raise _wrong(key, expected, value) from None
    if not local:
        raise _wrong(key, expected, value)
    return value


def _host_names(key: str, value: object) -> tuple[str, ...]:
    """Names for the certificate: host names, no wildcards (those need DNS-01), no repeats."""
    if not isinstance(value, list) or len(value) > MAX_ACME_NAMES:
        raise _wrong(key, f"a list of at most {MAX_ACME_NAMES} host names", value)
    names = tuple(_hostname(f"{key}[{i}]", item) for i, item in enumerate(value))
    return tuple(dict.fromkeys(names))


def _challenges(key: str, value: object) -> tuple[str, ...]:
    expected = "a non-empty list of " + ", ".join(f'"{c}"' for c in ACME_CHALLENGES)
    if not isinstance(value, list) or not value or any(
            item not in ACME_CHALLENGES for item in value):
        raise _wrong(key, expected, value)
    return tuple(dict.fromkeys(cast(list[str], value)))


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """Certificates obtained and renewed from an ACME CA (RFC 8555; docs/operations.md,
    "Certificates from ACME"). Off by default: it needs public DNS and open ports."""

    enabled: bool = field(default=False, metadata=checked(_boolean))
    directory: str = field(default=LETS_ENCRYPT_DIRECTORY, metadata=checked(_https_url))
    # The account's contact (RFC 8555 §7.3): where the CA writes about expiry and problems.
    contact: str | None = field(default=None, metadata=checked(_email))
    # Empty: the server's `hostname`. `extra_names` are added (mta-sts.DOMAIN, autoconfig...).
    names: tuple[str, ...] = field(default=(), metadata=checked(_host_names))
    extra_names: tuple[str, ...] = field(default=(), metadata=checked(_host_names))
    # Tried in this order for each name the CA offers them for.
    challenges: tuple[str, ...] = field(default=("http-01",), metadata=checked(_challenges))
    renew_before_days: int = field(default=30, metadata=checked(_integer(1, 365)))
    # CA certificates trusted for the directory's HTTPS (a private or test CA); None: system's.
    ca_bundle: Path | None = field(default=None, metadata=checked(_path))
    # The plain-HTTP listener answering HTTP-01 (RFC 8555 §8.3); the CA connects to port 80.
    http_listen: tuple[str, ...] = field(default=("0.0.0.0:80",), metadata=checked(_endpoints))
    # Seconds between two looks at the certificate's expiry while serving.
    check_interval: float = field(default=43_200.0, metadata=checked(_seconds))

    def all_names(self, hostname: str) -> tuple[str, ...]:
        """The certificate's names, the first one its subject."""
        return tuple(dict.fromkeys((*(self.names or (hostname,)), *self.extra_names)))

    def http_endpoints(self) -> list[tuple[str, int]]:
        return [parse_endpoint(text) for text in self.http_listen]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. Field defaults are the production defaults except `hostname`
    (load_config asks the system for it only when a file leaves it out)."""

    hostname: str = field(default="localhost", metadata=checked(_hostname))
    data_dir: Path = field(default=Path(PRODUCTION_DATA_DIR), metadata=checked(_path))
    # When started as root: drop to this user after binding. None: never drop (try-it-now).
    user: str | None = field(default="mailhouse", metadata=checked(_user))
    demo: bool = field(default=False, metadata=checked(_boolean))
    # The addresses the internet reaches this server at (empty: the doctor takes the
    # hostname's A/AAAA records for them, so it cannot tell when those point elsewhere).
    public_addresses: tuple[str, ...] = field(default=(), metadata=checked(_public_addresses))
    listen: ListenConfig = field(default_factory=ListenConfig, metadata=_section(ListenConfig))
    tls: TlsConfig = field(default_factory=TlsConfig, metadata=_section(TlsConfig))
    dns: DnsConfig = field(default_factory=DnsConfig, metadata=_section(DnsConfig))
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata=_section(LimitsConfig))
    smtp: SmtpConfig = field(default_factory=SmtpConfig, metadata=_section(SmtpConfig))
    log: LogConfig = field(default_factory=LogConfig, metadata=_section(LogConfig))
    trace: TraceConfig = field(default_factory=TraceConfig, metadata=_section(TraceConfig))
    submission: SubmissionConfig = field(default_factory=SubmissionConfig,
                                         metadata=_section(SubmissionConfig))
    queue: QueueConfig = field(default_factory=QueueConfig, metadata=_section(QueueConfig))
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig,
                                     metadata=_section(DeliveryConfig))
    dkim: DkimConfig = field(default_factory=DkimConfig, metadata=_section(DkimConfig))
    pop3: Pop3Config = field(default_factory=Pop3Config, metadata=_section(Pop3Config))
    imap: ImapConfig = field(default_factory=ImapConfig, metadata=_section(ImapConfig))
    admin: AdminConfig = field(default_factory=AdminConfig, metadata=_section(AdminConfig))
    web: WebConfig = field(default_factory=WebConfig, metadata=_section(WebConfig))
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig,
                                  metadata=_section(MtaStsConfig))
    acme: AcmeConfig = field(default_factory=AcmeConfig, metadata=_section(AcmeConfig))
    # Where this came from (None: try-it-now defaults) and what looked dubious but legal;
    # `serve` shows the warnings, admin commands stay quiet.
    source: Path | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def listen_endpoints(self, kind: str) -> list[tuple[str, int]]:
        """(host, port) pairs for one listener kind ("smtp", "imaps", …); IPv6 without
        brackets."""
        return self.listen.endpoints(kind)


def try_it_now_config(cwd: Path | None = None) -> Config:
    """The no-file defaults: a safe local playground (see module docstring)."""
    base = cwd if cwd is not None else Path.cwd()
    return Config(
        hostname="localhost",
        data_dir=(base / TRY_IT_NOW_DATA_DIR).resolve(),
        user=None,
        demo=True,
        listen=ListenConfig.try_it_now(),
    )


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """--config wins, then $MAILHOUSE_CONFIG; None means the try-it-now defaults."""
    if cli_value:
        return Path(cli_value)
    env = environ.get(ENV_CONFIG, "")
    return Path(env) if env else None


def load_config(path: Path | None) -> Config:
    """Read and validate the config at `path`, or return the try-it-now defaults for None.

    Raises ConfigError whose message names the key at fault."""
    if path is None:
        return try_it_now_config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (give --config PATH or set {ENV_CONFIG}; with "
            "neither, mailhouse runs with local try-it-now defaults)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_table(raw, base_dir=path.resolve().parent, source=path.resolve())


def config_from_table(raw: Mapping[str, object], *, base_dir: Path,
                      source: Path | None = None) -> Config:
    """Validate a parsed TOML table against production defaults. Relative paths are taken
    relative to `base_dir` (the config file's directory)."""
    top: dict[str, object] = {}
    sections: dict[str, Any] = {}
    for f in fields(Config):
        if _SECTION in f.metadata:
            cls = f.metadata[_SECTION]
            table = raw.get(f.name, {})
            if not isinstance(table, dict):
                raise _wrong(f.name, f"a table [{f.name}]", table)
            sections[f.name] = _build(cls(), table, prefix=f"{f.name}.")
    known = [f.name for f in fields(Config) if _CHECK in f.metadata or _SECTION in f.metadata]
    for key, value in raw.items():
        if key in sections:
            continue
        top[key] = value
    config = _build(Config(), top, prefix="", extra_known=known)
    if "hostname" not in raw:
        config = replace(config, hostname=_system_hostname())
    tls = cast(TlsConfig, sections["tls"])
    acme = cast(AcmeConfig, sections["acme"])
    config = replace(
        config,
        data_dir=_absolute(config.data_dir, base_dir),
        tls=replace(tls,
                    cert=_absolute(tls.cert, base_dir) if tls.cert else None,
                    key=_absolute(tls.key, base_dir) if tls.key else None),
        acme=replace(acme, ca_bundle=_absolute(acme.ca_bundle, base_dir)
                     if acme.ca_bundle else None),
        source=source,
        **{name: value for name, value in sections.items() if name not in ("tls", "acme")},
    )
    _check_whole(config)
    return replace(config, warnings=_warnings(config))


def _build(base: D, table: Mapping[str, object], *, prefix: str,
           extra_known: list[str] | None = None) -> D:
    """Apply a TOML table to a dataclass instance, key by key, through each field's check."""
    checks = {f.name: f.metadata[_CHECK] for f in fields(base) if _CHECK in f.metadata}
    changes: dict[str, Any] = {}
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            known = sorted(set(checks) | set(extra_known or ()))
            hint = difflib.get_close_matches(key, known, n=1)
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            fix = f"did you mean {prefix}{hint[0]}?" if hint else (
                f"known keys in {where}: {', '.join(known)}")
            raise ConfigError(f"{prefix}{key}: unknown key ({fix})")
        changes[key] = check(f"{prefix}{key}", value)
    return replace(base, **changes)


def _absolute(path: Path, base_dir: Path) -> Path:
    return (base_dir / path).resolve()


def _system_hostname() -> str:
    """The machine's FQDN, if it is a usable host name; "localhost" otherwise."""
    try:
        return normalize_domain(socket.getfqdn())
    except AddressError:
        return "localhost"


def _check_whole(config: Config) -> None:
    """Rules that span keys."""
    if (config.tls.cert is None) != (config.tls.key is None):
        missing = "tls.key" if config.tls.key is None else "tls.cert"
        raise ConfigError(
            f"{missing}: set both tls.cert and tls.key, or neither (then a self-signed "
            "certificate is made in data_dir)")
    _check_acme(config)
    seen: dict[tuple[str, int], str] = {}
    for kind in LISTENER_KINDS:
        for endpoint in config.listen_endpoints(kind):
            if endpoint[1] == 0:
                continue  # the kernel picks distinct ports
            other = seen.get(endpoint)
            if other is not None:
                shown = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
                raise ConfigError(
                    f"listen.{kind}: {shown}:{endpoint[1]} is already used by listen.{other}")
            seen[endpoint] = kind


def _check_acme(config: Config) -> None:
    acme = config.acme
    if not acme.enabled:
        return
    if config.tls.cert is not None:
        raise ConfigError("acme.enabled: ACME installs its own certificate; remove tls.cert and "
                          "tls.key, or set acme.enabled = false")
    if "http-01" in acme.challenges and not acme.http_listen:
        raise ConfigError('acme.http_listen: the "http-01" challenge needs a listener (the CA '
                          'connects to port 80); list one or use only "tls-alpn-01"')
    if "tls-alpn-01" in acme.challenges and not config.web.listen:
        raise ConfigError('acme.challenges: "tls-alpn-01" is answered on web.listen (the CA '
                          "connects to port 443); list one there or use only \"http-01\"")
    taken = {endpoint for endpoint in config.web.endpoints() if endpoint[1] != 0}
    for endpoint in acme.http_endpoints():
        if endpoint in taken:
            raise ConfigError(f"acme.http_listen: {endpoint[0]}:{endpoint[1]} is already "
                              "used by web.listen (HTTPS); port 80 is plain HTTP")
    for name in acme.all_names(config.hostname):
        if "." not in name or all(c.isdigit() or c == "." for c in name):
            key = "hostname" if name == config.hostname and not acme.names else "acme.names"
            raise ConfigError(f"{key}: {name!r} cannot get a certificate from a public CA; "
                              "ACME needs a public DNS name such as \"mail.example.com\"")
    if len(acme.all_names(config.hostname)) > MAX_ACME_NAMES:
        raise ConfigError(f"acme.extra_names: at most {MAX_ACME_NAMES} names in one "
                          "certificate, names included")


def _warnings(config: Config) -> tuple[str, ...]:
    limits = config.limits
    out = []
    if limits.max_recipients < RFC_MIN_RECIPIENTS:
        out.append(f"limits.max_recipients = {limits.max_recipients} is below the "
                   f"{RFC_MIN_RECIPIENTS} recipients RFC 5321 §4.5.3.1.8 requires servers to "
                   "accept")
    if limits.idle_timeout < RFC_MIN_IDLE_TIMEOUT:
        out.append(f"limits.idle_timeout = {limits.idle_timeout:g} s is below the 5 minutes "
                   "RFC 5321 §4.5.3.2.7 asks servers to wait for a command")
    if limits.max_connections_per_ip > limits.max_connections:
        out.append("limits.max_connections_per_ip is larger than limits.max_connections and "
                   "has no effect")
    return tuple(out)


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs (or sections), for SIGHUP's
    report of what a restart would change; `source` and `warnings` are not settings."""
    if not (is_dataclass(old) and is_dataclass(new)):
        return [prefix] if old != new else []
    changed: list[str] = []
    for f in fields(old):
        if f.name in ("source", "warnings"):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        changed += changed_keys(getattr(old, f.name), getattr(new, f.name), key)
    return changed
