"""The private Postfix fixture itself, against Postfix's own smtp-sink (no mailhouse involved).

If these fail, the relay tests' failures are about the harness, not about mailhouse.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.fixtures import PostfixFactory
from tests.helpers.net import LOOPBACK, free_port, smtp_greets, wait_until
from tests.helpers.postfix import PostfixInstance, pid_alive
from tests.helpers.swaks import swaks
from tests.helpers.tools import program

pytestmark = pytest.mark.interop


@pytest.fixture
def smtp_sink(postfix_tools: dict[str, str]) -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (accepts and discards everything)."""
    sink = program("smtp-sink")
    port = free_port()
    process = subprocess.Popen(
        [sink, "-u", "nobody", f"{LOOPBACK}:{port}", "64"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: smtp_greets(port), timeout=10), "smtp-sink did not start"
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_relay_and_virtual_delivery(
    swaks_tool: str, postfix_factory: PostfixFactory, smtp_sink: int
) -> None:
    postfix: PostfixInstance = postfix_factory(
        relay={"relay.test": smtp_sink}, mailboxes=["user@local.test"]
    )
    swaks(postfix.port, to="someone@relay.test").check()
    swaks(postfix.port, to="user@local.test").check()
    sent = postfix.wait_for_deliveries(2, timeout=30)
    by_rcpt = {d.to: d for d in sent}
    assert by_rcpt["someone@relay.test"].relay == f"{LOOPBACK}[{LOOPBACK}]:{smtp_sink}"
    assert by_rcpt["user@local.test"].agent == "virtual"
    assert postfix.mailbox_count("user@local.test") == 1
    assert postfix.pending_count() == 0
    # Any other domain fails at once (default_transport = error): no DNS, no real network.
    refused = swaks(postfix.port, to="someone@elsewhere.test")
    assert not refused.ok
    assert "no route outside 127.0.0.1" in refused.transcript, refused.transcript


def test_stop_leaves_no_process(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory()
    pid = postfix.master_pid()
    assert pid is not None
    postfix.stop()
    assert not smtp_greets(postfix.port)
    assert not pid_alive(pid)
