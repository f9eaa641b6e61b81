"""SIGHUP reloads the certificate (a renewal) in the main process and every worker: new
handshakes get the new one, a session opened before keeps working, a bad pair changes nothing."""

from __future__ import annotations

import imaplib
import os
import signal
import ssl
from pathlib import Path

import trustme
from cryptography import x509

from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import served_serial, wait_until

HOST = "mx.example.test"


def write_pair(ca: trustme.CA, cert: Path, key: Path) -> int:
    issued = ca.issue_cert(HOST)
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number


def test_sighup_reloads_the_certificate_everywhere(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = write_pair(ca, cert, key)
    server = MailhouseServer(
        tmp_path / "mh", protocols=("smtp", "submissions", "imaps"), hostname=HOST,
        extra_toml=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n[imap]\nworkers = 2')
    server.add_domain("example.test")
    server.add_user("alice@example.test", "correct horse battery")
    server.start()
    try:
        assert served_serial(server.port("submissions")) == first  # the main process
        assert served_serial(server.port("imaps")) == first  # a worker process
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        before = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context,
                                   timeout=10)
        before.login("alice@example.test", "correct horse battery")

        second = write_pair(ca, cert, key)  # the renewal
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGHUP)

        def reloaded() -> bool:  # the main process and both workers (one maybe still starting:
            # it remembers the signal and reloads once its listeners run)
            return server.log_path.read_text().count("event=tls.reloaded") >= 3

        assert wait_until(reloaded, timeout=15, interval=0.05), server.log_tail()
        assert "event=imap.process_exited" not in server.log_path.read_text()
        assert served_serial(server.port("submissions")) == second
        assert {served_serial(server.port("imaps")) for _ in range(6)} == {second}
        assert before.noop()[0] == "OK"  # the session opened before still works
        before.logout()

        key.write_text("not a key\n")  # a bad renewal: logged, the old pair stays
        os.kill(server.process.pid, signal.SIGHUP)

        def refused() -> bool:
            return server.log_path.read_text().count("event=tls.reload_failed") >= 3

        assert wait_until(refused, timeout=15, interval=0.05), server.log_tail()
        assert served_serial(server.port("submissions")) == second
        assert served_serial(server.port("imaps")) == second
        assert server.running
    finally:
        server.close()


def test_sighup_checks_the_config_file(tmp_path: Path) -> None:
    """A config edited under a running server: SIGHUP names the changed keys (applied at the
    next restart), and a broken file is reported now, before a restart would fail on it."""
    server = MailhouseServer(tmp_path / "mh", protocols=("smtp",), hostname=HOST)
    server.start()
    try:
        assert server.process is not None
        original = server.config_path.read_text()
        server.config_path.write_text(original + "\n[trace]\nkeep_days = 7\n")
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: "event=config.restart_needed" in server.log_path.read_text(),
                          timeout=15, interval=0.05), server.log_tail()
        assert "keys=trace.keep_days" in server.log_path.read_text()
        server.config_path.write_text(original + "\n[trace]\nkeep_days = \"soon\"\n")
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_until(lambda: "event=config.invalid" in server.log_path.read_text(),
                          timeout=15, interval=0.05), server.log_tail()
        assert "trace.keep_days" in server.log_path.read_text().split("event=config.invalid")[1]
        assert "event=shutdown" not in server.log_path.read_text()  # still serving
    finally:
        server.stop()
