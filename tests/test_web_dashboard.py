"""The dashboard's sources (web/dashboard.py, web/recent_errors.py): counters read back from
the Prometheus exposition, the certificate's expiry from its file, the last errors kept by a
logging handler, and the page itself with every source present."""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path

import trustme

from mailhouse.config import load_config
from mailhouse.store import open_store
from mailhouse.web import dashboard
from mailhouse.web.recent_errors import RECENT_ERRORS, RecentErrors

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
