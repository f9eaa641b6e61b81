"""What the web admin's dashboard shows, gathered from where each fact already lives: the
queue from the store's aggregate (`Store.queue_stats`, as /metrics reads it), the counters from
the Prometheus exposition the admin listener serves (summed over every process), the
certificate from the file `serve` loads, the disk from the data directory's file system, and
the last errors from recent_errors.py (every process's), the last day's deliveries and
failures per hour from the message trace's steps (`Store.event_counts`), and the ACME
renewal's state from the file the renewal task writes. Nothing here changes anything.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from mailhouse.config import Config
from mailhouse.service.acme_files import RenewalState, load_state
from mailhouse.service.cert_info import presented_certificate
from mailhouse.store.base import Store


@dataclass(frozen=True, slots=True)
class Certificate:
    path: str
    subject: str
    not_after: float | None  # epoch seconds; None: unreadable
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Disk:
    total: int
    free: int


@dataclass(frozen=True, slots=True)
class Hour:
    """One hour's steps of the message trace, by what the dashboard shows."""

    start: float
    counts: dict[str, int]  # column (HOURLY) -> steps


@dataclass(frozen=True, slots=True)
class Overview:
    queue_messages: int
    queue_recipients: int
    queue_oldest_age: float | None  # seconds
    counters: dict[str, float]  # "connections smtp" -> total since the server started
    certificate: Certificate | None
    disk: Disk | None
    hours: tuple[Hour, ...] = ()  # the last HISTORY_HOURS, oldest first, empty hours included
    renewal: RenewalState | None = None  # ACME on: what its task last did


HISTORY_HOURS = 24
# The hourly table's columns: the trace's step kinds each one sums (service/trace_events.py).
HOURLY = {"received": ("received",), "stored": ("stored",), "delivered": ("delivered",),
          "deferred": ("deferred",), "bounced": ("bounced",),
          "refused": ("refused", "rejected", "not_stored")}


async def hourly(store: Store, now: float, hours: int = HISTORY_HOURS) -> tuple[Hour, ...]:
    """Deliveries and failures per hour, from one aggregate read of the trace's steps."""
    first = (int(now) // 3600 - hours + 1) * 3600
    column = {kind: name for name, kinds in HOURLY.items() for kind in kinds}
    table: dict[float, dict[str, int]] = {
        float(first + 3600 * n): dict.fromkeys(HOURLY, 0) for n in range(hours)}
    for count in await store.event_counts(float(first), 3600):
        name = column.get(count.kind)
        if name is not None and count.start in table:
            table[count.start][name] += count.count
    return tuple(Hour(start, counts) for start, counts in table.items())


# The counters shown, by metric family and label: "what" -> (family, label name).
COUNTERS = {"connections": ("mailhouse_connections", "service"),
            "deliveries": ("mailhouse_deliveries", "outcome"),
            "messages received": ("mailhouse_smtp_messages", "service"),
            "logins": ("mailhouse_logins", "result")}


async def overview(config: Config, store: Store,
                   metrics: Callable[[], Awaitable[bytes]] | None,
                   now: float, presented: Callable[[], Path] | None = None) -> Overview:
    """`presented`: the certificate file the listeners present now (AdminContext.certificate:
    the ACME pair once there is one); without it, the configured or self-signed file."""
    stats = await store.queue_stats()
    counters = parse_counters((await metrics()).decode()) if metrics is not None else {}
    certificate, disk, renewal = await asyncio.to_thread(_files, config, presented)
    return Overview(stats.messages, stats.recipients,
                    None if stats.oldest is None else max(0.0, now - stats.oldest),
                    counters, certificate, disk, await hourly(store, now), renewal)


def parse_counters(exposition: str) -> dict[str, float]:
    """Sum each shown family's `_total` samples per label value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for title, (name, label) in COUNTERS.items():
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = f"{title} {sample.labels.get(label, '')}".strip()
                    out[key] = out.get(key, 0.0) + sample.value
    return dict(sorted(out.items()))


def read_certificate(path: Path) -> Certificate:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Certificate(str(path), "", None, f"unreadable: {exc}")
    not_after = cert.not_valid_after_utc.replace(tzinfo=datetime.UTC).timestamp()
    return Certificate(str(path), cert.subject.rfc4514_string(), not_after)


def _files(config: Config, presented: Callable[[], Path] | None
           ) -> tuple[Certificate | None, Disk | None, RenewalState | None]:
    path = presented() if presented is not None else presented_certificate(config)[1]
    certificate = read_certificate(path) if path is not None and path.exists() else None
    renewal = load_state(config.data_dir) if config.acme.enabled else None
    try:
        usage = shutil.disk_usage(config.data_dir)
    except OSError:
        return certificate, None, renewal
    return certificate, Disk(usage.total, usage.free), renewal
