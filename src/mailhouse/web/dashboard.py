"""What the web admin's dashboard shows, gathered from where each fact already lives: the
queue from the store's aggregate (`Store.queue_stats`, as /metrics reads it), the counters from
the Prometheus exposition the admin listener serves (summed over every process), the
certificate from the file `serve` loads, the disk from the data directory's file system, and
the last errors from web/recent_errors.py. Nothing here changes anything.
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
from mailhouse.store.base import Store

SELF_SIGNED_CERT = ("tls", "selfsigned-cert.pem")  # under data_dir (net/tls.py)


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
class Overview:
    queue_messages: int
    queue_recipients: int
    queue_oldest_age: float | None  # seconds
    counters: dict[str, float]  # "connections smtp" -> total since the server started
    certificate: Certificate | None
    disk: Disk | None


# The counters shown, by metric family and label: "what" -> (family, label name).
COUNTERS = {"connections": ("mailhouse_connections", "service"),
            "deliveries": ("mailhouse_deliveries", "outcome"),
            "messages received": ("mailhouse_smtp_messages", "service"),
            "logins": ("mailhouse_logins", "result")}


async def overview(config: Config, store: Store,
                   metrics: Callable[[], Awaitable[bytes]] | None,
                   now: float) -> Overview:
    stats = await store.queue_stats()
    counters = parse_counters((await metrics()).decode()) if metrics is not None else {}
    certificate, disk = await asyncio.to_thread(_files, config)
    return Overview(stats.messages, stats.recipients,
                    None if stats.oldest is None else max(0.0, now - stats.oldest),
                    counters, certificate, disk)


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


def certificate_path(config: Config) -> Path | None:
    """The certificate `serve` loads: the configured one, else the self-signed one."""
    if config.tls.cert is not None:
        return config.tls.cert
    self_signed = config.data_dir.joinpath(*SELF_SIGNED_CERT)
    return self_signed if self_signed.exists() else None


def read_certificate(path: Path) -> Certificate:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Certificate(str(path), "", None, f"unreadable: {exc}")
    not_after = cert.not_valid_after_utc.replace(tzinfo=datetime.UTC).timestamp()
    return Certificate(str(path), cert.subject.rfc4514_string(), not_after)


def _files(config: Config) -> tuple[Certificate | None, Disk | None]:
    path = certificate_path(config)
    certificate = read_certificate(path) if path is not None else None
    try:
        usage = shutil.disk_usage(config.data_dir)
    except OSError:
        return certificate, None
    return certificate, Disk(usage.total, usage.free)
