"""Prometheus metrics (issue 9 §6), counted in every process of `serve` and exposed as one set.

`serve` is several processes (listeners, the queue, POP3 and IMAP workers), and a scrape must
see their sum, including what a worker counted before it was restarted. prometheus-client's
multiprocess mode does exactly that: each process writes its values to memory-mapped files in
one directory (`data_dir/run/metrics`, emptied by the main process at start, before any child
exists), and the exposition adds them up. Without that directory (tests, the CLI) the values
live in this process only.

Names follow Prometheus's conventions (`mailhouse_` prefix, `_total` counters, base units).
Labels are bounded sets chosen by the server (a service name, an outcome, an IMAP command
name from the grammar), never peer text, so no client can grow the series without bound.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailhouse.run_dirs import fresh_shared_dir

ENV = "PROMETHEUS_MULTIPROC_DIR"
RUN_DIR = ("run", "metrics")


# Latency buckets, seconds: store and protocol work (ms to s), and remote deliveries (to minutes).
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True, slots=True)
class Metrics:
    connections: Counter  # service
    smtp_messages: Counter  # service (smtp, submission, submissions)
    logins: Counter  # service, result
    deliveries: Counter  # outcome: delivered, deferred, failed
    imap_commands: Counter  # command
    commit_batches: Histogram  # jobs per group commit
    commit_seconds: Histogram  # one group commit: fsyncs and the transaction
    delivery_seconds: Histogram  # one outbound attempt to one domain's servers
    accept_seconds: Histogram  # service: end of DATA/BDAT to the stored, fsynced message
    imap_command_seconds: Histogram  # command


def _build(registry: CollectorRegistry | None) -> Metrics:
    return Metrics(
        connections=Counter("mailhouse_connections", "Connections accepted",
                            ["service"], registry=registry),
        smtp_messages=Counter("mailhouse_smtp_messages", "Messages accepted over SMTP (250)",
                              ["service"], registry=registry),
        logins=Counter("mailhouse_logins", "Login attempts by outcome",
                       ["service", "result"], registry=registry),
        deliveries=Counter("mailhouse_deliveries",
                           "Outbound delivery outcomes, one per recipient and attempt",
                           ["outcome"], registry=registry),
        imap_commands=Counter("mailhouse_imap_commands", "IMAP commands run",
                              ["command"], registry=registry),
        commit_batches=Histogram("mailhouse_store_commit_jobs",
                                 "Writes committed together per group commit (fsync)",
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                 registry=registry),
        commit_seconds=Histogram("mailhouse_store_commit_seconds",
                                 "Time of one group commit, fsyncs included",
                                 buckets=_FAST, registry=registry),
        delivery_seconds=Histogram("mailhouse_delivery_attempt_seconds",
                                   "Time of one outbound attempt to one domain (DNS, connect, "
                                   "SMTP dialogue)", buckets=_SLOW, registry=registry),
        accept_seconds=Histogram("mailhouse_smtp_accept_seconds",
                                 "From the end of a message's data to its 250 (stored, fsynced)",
                                 ["service"], buckets=_FAST, registry=registry),
        imap_command_seconds=Histogram("mailhouse_imap_command_seconds",
                                       "Time to run one IMAP command (its tagged reply)",
                                       ["command"], buckets=_FAST, registry=registry),
    )


_registry = CollectorRegistry()
_metrics: Metrics | None = None


def get() -> Metrics:
    """The process's metrics, made on first use (after `prepare` or `attach` when serving)."""
    global _metrics
    if _metrics is None:
        _metrics = _build(_registry)
    return _metrics


def prepare(data_dir: Path) -> Path:
    """The main process of `serve`, before any child starts: an empty directory for every
    process's values, named in the environment the children inherit."""
    directory = fresh_shared_dir(data_dir, RUN_DIR, ENV)
    attach()
    return directory


def attach() -> None:
    """Count into the shared directory when one is named (a child of `serve`)."""
    global _metrics, _registry
    if os.environ.get(ENV):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        _registry = CollectorRegistry()
        _metrics = _build(_registry)


@dataclass(frozen=True, slots=True)
class QueueNow:
    """What waits in the queue at the scrape (the store's aggregate)."""

    messages: int
    recipients: int
    oldest_age: float | None  # seconds since the oldest waiting message arrived


def render(queue: QueueNow | None = None) -> bytes:
    """The exposition of every process's values (or this process's alone), and the queue's
    state read at the scrape."""
    directory = os.environ.get(ENV)
    if not directory:
        get()
        text = generate_latest(_registry)
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    if queue is None:
        return text
    now = CollectorRegistry()
    now.register(_Queue(queue))
    return text + generate_latest(now)


class _Queue(Collector):
    def __init__(self, queue: QueueNow) -> None:
        self._queue = queue

    def collect(self) -> Iterator[Metric]:
        q = self._queue
        yield GaugeMetricFamily("mailhouse_queue_messages", "Messages waiting for delivery",
                                value=q.messages)
        yield GaugeMetricFamily("mailhouse_queue_recipients", "Recipients waiting for delivery",
                                value=q.recipients)
        yield GaugeMetricFamily("mailhouse_queue_oldest_age_seconds",
                                "Age of the oldest waiting message (0: none waits)",
                                value=q.oldest_age or 0.0)
