"""Fixtures for interop tests: real Debian programs (swaks, Postfix) against a real mailhouse.

- `mailhouse`: one mailhouse subprocess per test module (smtp listener on a free loopback port,
  domain example.test, users alice and bob); tests tell their messages apart by unique ids.
- `postfix_instance`: a private Postfix (own config/queue/data dirs under /tmp, chroot=n,
  smtpd on a free loopback port, maillog_file logging) that relays example.test to the module's
  mailhouse as its MX via ``transport_maps`` → ``smtp:[127.0.0.1]:PORT``, STARTTLS "may".
- `mailhouse_factory` / `postfix_factory` (from tests.helpers.fixtures): per-test instances, for
  tests that kill or reconfigure them.

Missing programs (or not being root, for Postfix) skip the tests with the reason, except under
CI=true, where they fail: .ci/run installs everything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.fixtures import (  # noqa: F401  (pytest registers fixtures by name)
    DOMAIN,
    mailhouse_factory,
    postfix_factory,
    start_mailhouse,
)
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.postfix import PostfixInstance
from tests.helpers.tools import require_root, require_tools


@pytest.fixture(scope="session")
def swaks_tool() -> str:
    """Absolute path of swaks (skip / fail under CI when missing)."""
    return require_tools("swaks")["swaks"]


@pytest.fixture(scope="session")
def postfix_tools() -> dict[str, str]:
    """postfix, postqueue and smtp-source, and root to start a private Postfix."""
    tools = require_tools("postfix", "postqueue", "smtp-source")
    require_root("a private Postfix instance")
    return tools


@pytest.fixture(scope="module")
def mailhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailhouseServer]:
    """A mailhouse server shared by the tests of one module (example.test: alice, bob)."""
    server = start_mailhouse(tmp_path_factory.mktemp("mailhouse"))
    try:
        yield server
    finally:
        server.close()
        print(server.log_tail(200))


@pytest.fixture(scope="module")
def postfix_instance(
    postfix_tools: dict[str, str], mailhouse: MailhouseServer
) -> Iterator[PostfixInstance]:
    """A private Postfix relaying example.test to the module's mailhouse (see module doc)."""
    instance = PostfixInstance(relay={DOMAIN: mailhouse.smtp_port})
    try:
        instance.start()
        yield instance
    finally:
        print(instance.maillog()[-6000:])
        instance.close()
