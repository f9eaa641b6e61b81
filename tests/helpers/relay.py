"""A running mailhouse that relays to a fake remote MX (tests/helpers/fake_smtp.py) found
through the tests' DNS server: for end-to-end tests of the queue, the trace and bounces."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.dns import DnsServer
from tests.helpers.fake_smtp import FakeSmtp, Script, Servers
from tests.helpers.mailhouse import MailhouseServer

MX_IP = "127.0.0.2"  # mx.remote.test, the MX of remote.test
PASSWORD = "correct horse battery"  # alice@example.test's


@contextmanager
def remote_mx(script: Script) -> Iterator[Servers]:
    """The fake remote MX, served on its own event loop in a thread (the test's own code is
    synchronous: it drives the real server over sockets)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    group = FakeSmtp.group({MX_IP: script})
    servers = asyncio.run_coroutine_threadsafe(group.__aenter__(), loop).result(10)
    try:
        yield servers
    finally:
        asyncio.run_coroutine_threadsafe(group.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextmanager
def relaying_server(base: Path, remote: Servers) -> Iterator[MailhouseServer]:
    """mailhouse with SMTP and submissions, hosting example.test (user alice, PASSWORD), whose
    mail to remote.test goes to `remote`."""
    zones: dict[str, object] = {"remote.test": {"MX": [(10, "mx.remote.test")]},
                                "mx.remote.test": {"A": [MX_IP]}}
    with DnsServer(zones) as dns:  # type: ignore[arg-type]
        instance = MailhouseServer(
            base, protocols=("smtp", "submissions"),
            extra_toml=(f"[delivery]\nport = {remote.port}\n"
                        f'[dns]\nnameservers = ["{dns.nameserver}"]\n'
                        "[dkim]\nenabled = false\n"))
        instance.add_domain("example.test")
        instance.add_user("alice@example.test", PASSWORD)
        instance.start()
        try:
            yield instance
        finally:
            instance.close()
