"""The dashboard's sources (web/dashboard.py, recent_errors.py): counters read back from
the Prometheus exposition, the certificate's expiry from its file, the last errors kept by a
logging handler, and the page itself with every source present."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from mailhouse import recent_errors
from mailhouse.config import load_config
from mailhouse.recent_errors import RECENT_ERRORS, RecentErrors
from mailhouse.service.acme_files import RenewalState, save_state
from mailhouse.store import open_store
from mailhouse.store.base import TraceEvent
from mailhouse.web import dashboard

SRC = Path(__file__).resolve().parents[1] / "src"
EXPOSITION = """\
# HELP mailhouse_connections_total Connections accepted.
# TYPE mailhouse_connections_total counter
mailhouse_connections_total{service="smtp"} 3.0
mailhouse_connections_total{service="imap"} 2.0
# HELP mailhouse_deliveries_total Outbound attempts.
# TYPE mailhouse_deliveries_total counter
mailhouse_deliveries_total{outcome="deferred"} 4.0
mailhouse_deliveries_created{outcome="deferred"} 1.7e9
# HELP mailhouse_other_total Not shown.
# TYPE mailhouse_other_total counter
mailhouse_other_total 9.0
"""


def test_counters_are_read_from_the_exposition() -> None:
    assert dashboard.parse_counters(EXPOSITION) == {
        "connections imap": 2.0, "connections smtp": 3.0, "deliveries deferred": 4.0}
    assert dashboard.parse_counters("") == {}


def test_certificate_expiry_and_an_unreadable_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.test")
    pem = tmp_path / "cert.pem"
    pem.write_bytes(leaf.cert_chain_pems[0].bytes())
    cert = dashboard.read_certificate(pem)
    assert cert.problem == "" and cert.path == str(pem)
    assert cert.not_after is not None
    assert cert.not_after > datetime.datetime.now(datetime.UTC).timestamp()
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    assert dashboard.read_certificate(broken).problem.startswith("unreadable")
    assert dashboard.read_certificate(tmp_path / "missing.pem").not_after is None


def test_recent_errors_keep_the_newest_warnings_only() -> None:
    handler = RecentErrors()
    logger = logging.getLogger("mailhouse.test_recent_errors")
    logger.addHandler(handler)
    try:
        logger.info("not kept")
        for n in range(RECENT_ERRORS + 5):
            logger.warning("event=thing n=%d", n)
        logger.error("event=bad")
    finally:
        logger.removeHandler(handler)
    kept = handler.newest_first()
    assert len(kept) == RECENT_ERRORS
    assert kept[0].level == "ERROR" and kept[1].text == f"event=thing n={RECENT_ERRORS + 4}"
    assert RecentErrors.shared() is RecentErrors.shared()
    # A record whose format does not fit its arguments is kept as its format, never raised.
    handler.emit(logging.LogRecord("mailhouse.x", logging.ERROR, __file__, 1, "bad %s %s",
                                   ("one",), None))
    assert handler.newest_first()[0].text == "bad %s %s"


def test_overview_from_a_store_the_metrics_and_the_files(tmp_path: Path) -> None:
    path = tmp_path / "mailhouse.toml"
    (tmp_path / "data").mkdir()
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    config = load_config(path)

    async def main() -> dashboard.Overview:
        store = open_store(config.data_dir, "memory")
        await store.open()
        try:
            async def exposition() -> bytes:
                return EXPOSITION.encode()
            return await dashboard.overview(config, store, exposition, 1000.0)
        finally:
            await store.close()

    view = asyncio.run(main())
    assert (view.queue_messages, view.queue_oldest_age) == (0, None)
    assert view.counters["connections smtp"] == 3.0
    assert view.certificate is None  # no certificate yet: serve makes the self-signed one
    assert view.disk is not None and 0 < view.disk.free <= view.disk.total


def test_the_last_day_per_hour_and_the_acme_state(tmp_path: Path) -> None:
    """Deliveries and failures per hour from the trace's steps (empty hours included, the
    window's edges respected), the certificate the listeners present, the renewal's state."""
    path = tmp_path / "mailhouse.toml"
    data = tmp_path / "data"
    data.mkdir()
    path.write_text(f'data_dir = "{data}"\nhostname = "mx.example.org"\n'
                    '[acme]\nenabled = true\ncontact = "postmaster@example.org"\n')
    config = load_config(path)
    now = 100 * 3600.0 + 1800  # half past the 100th hour
    save_state(data, RenewalState(last_attempt=now - 60, last_error="connection refused",
                                  next_check=now + 60, failures=3))
    ca = trustme.CA()
    presented = tmp_path / "acme.pem"
    ca.issue_cert("mx.example.org").cert_chain_pems[0].write_to_path(str(presented))

    async def main() -> dashboard.Overview:
        store = open_store(config.data_dir, "memory")
        await store.open()
        try:
            await store.record_events([
                TraceEvent(now - 24 * 3600, "T0", "delivered"),  # just before the window
                TraceEvent(now - 23 * 3600, "T1", "delivered"),
                TraceEvent(now - 10, "T2", "received"),
                TraceEvent(now - 9, "T2", "deferred"),
                TraceEvent(now - 8, "T3", "rejected"),
                TraceEvent(now - 7, "T3", "refused"),
            ])
            return await dashboard.overview(config, store, None, now, lambda: presented)
        finally:
            await store.close()

    view = asyncio.run(main())
    assert len(view.hours) == dashboard.HISTORY_HOURS
    assert view.hours[-1].start == 100 * 3600.0 and view.hours[0].start == 77 * 3600.0
    assert view.hours[-1].counts == {"received": 1, "stored": 0, "delivered": 0,
                                     "deferred": 1, "bounced": 0, "refused": 2}
    assert view.hours[0].counts["delivered"] == 1
    assert sum(h.counts["delivered"] for h in view.hours) == 1  # T0 is outside
    assert view.certificate is not None and view.certificate.path == str(presented)
    assert view.renewal is not None and view.renewal.failing
    assert view.renewal.failures == 3


def test_recent_errors_of_every_process(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The main process prepares the directory; a child (here a real subprocess, as the
    supervisor starts them) attaches and its warnings reach the main process's dashboard."""
    monkeypatch.setattr(RecentErrors, "_installed", None)
    monkeypatch.delenv(recent_errors.ENV, raising=False)
    stale = tmp_path / "run" / "errors" / "1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("[]")
    directory = recent_errors.prepare(tmp_path)
    try:
        assert not stale.exists()  # the last run's processes are gone
        child = ("import logging, mailhouse.recent_errors as r; r.attach(); "
                 "logging.getLogger('mailhouse.imap').warning('event=child.trouble')")
        subprocess.run([sys.executable, "-c", child], check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(SRC)})
        logging.getLogger("mailhouse.test").error("event=main.trouble")
        (directory / "9.json").write_text("not json")  # skipped, never raised
        shown = RecentErrors.shared().newest_first()
        assert [e.text for e in shown][:2] == ["event=main.trouble", "event=child.trouble"]
        assert shown[0].pid == os.getpid() and shown[1].pid != os.getpid()
    finally:
        logging.getLogger("mailhouse").removeHandler(RecentErrors.shared())
        os.environ.pop(recent_errors.ENV, None)  # set by prepare(), not by monkeypatch
