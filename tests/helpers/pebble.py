"""Pebble (Let's Encrypt's test ACME server, Debian package `pebble`) on loopback, for tests.

Pebble really validates (PEBBLE_VA_ALWAYS_VALID=0): it resolves each name through the test DNS
server (tests/helpers/dns.py, `-dnsserver`) and connects to the address found on the HTTP-01
and TLS-ALPN-01 ports given here (`httpPort`/`tlsPort`: the test's listeners, not 80/443).
Its own HTTPS certificate comes from a trustme CA; `ca_bundle` is what the client trusts.
Nonce rejection and the validation sleep are off, so runs are fast and deterministic.

Usage::

    with DnsServer({"mx.example.test": {"A": ["127.0.0.1"]}}) as dns, \\
            Pebble(tmp_path, dns.nameserver, http_port=80xx, tls_port=44xx) as ca:
        ca.directory   # https://127.0.0.1:PORT/dir
        ca.ca_bundle   # Path of the CA file for the ACME client
        ca.roots()     # PEM of the root that signs issued certificates
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import trustme

from tests.helpers.net import free_ports
from tests.helpers.tools import program

START_TIMEOUT = 20.0


class Pebble:
    def __init__(self, base_dir: Path, nameserver: str, *, http_port: int,
                 tls_port: int) -> None:
        self.base_dir = base_dir
        self.nameserver = nameserver
        self.http_port = http_port
        self.tls_port = tls_port
        self.port, self.management_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None
        self.ca_bundle = base_dir / "pebble-ca.pem"
        self.log = base_dir / "pebble.log"

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = self.base_dir / "pebble-cert.pem", self.base_dir / "pebble-key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        config_file = self.base_dir / "pebble-config.json"
        config_file.write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_VA_ALWAYS_VALID": "0",
               "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [program("pebble"), "-config", str(config_file), "-dnsserver", self.nameserver],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pebble exited: {self.log.read_text()[-2000:]}")
            try:
                self._get(self.directory)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pebble did not start: {self.log.read_text()[-2000:]}")

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            body: bytes = response.read()
            return body

    def roots(self) -> bytes:
        """The root CA that signs this run's certificates (regenerated at every start)."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
