"""pytest fixtures around MailhouseServer and PostfixInstance.

Import the ones you need into a conftest.py (pytest registers fixtures by name there)::

    from tests.helpers.fixtures import mailhouse_factory, mailhouse_server  # noqa: F401

- `mailhouse_factory`: call it to get started servers in fresh tmp dirs; all are stopped at
  teardown, and their logs are printed (pytest shows them when the test fails).
- `mailhouse_server`: one started server with the smtp listener, domain example.test and users
  alice@example.test / bob@example.test (passwords in `USERS`).
- `postfix_factory`: call it to get started private Postfix instances (needs root and the
  postfix package: skipped on a developer machine without them, failed under CI=true).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.postfix import PostfixInstance
from tests.helpers.tools import require_root, require_tools

DOMAIN = "example.test"
USERS: dict[str, str] = {
    "alice@example.test": "alice-password",
    "bob@example.test": "bob-password",
}

MailhouseFactory = Callable[..., MailhouseServer]
PostfixFactory = Callable[..., PostfixInstance]


def start_mailhouse(
    base_dir: Path,
    *,
    domains: Iterable[str] = (DOMAIN,),
    users: Mapping[str, str] | None = None,
    start: bool = True,
    **kwargs: Any,
) -> MailhouseServer:
    """Create an instance in `base_dir`, add domains and users, and (by default) start it.

    kwargs go to MailhouseServer (protocols, hostname, max_message_size, extra_toml,
    extra_limits, env).
    """
    server = MailhouseServer(base_dir, **kwargs)
    for domain in domains:
        server.add_domain(domain)
    for address, password in (USERS if users is None else users).items():
        server.add_user(address, password)
    if start:
        server.start()
    return server


@pytest.fixture
def mailhouse_factory(tmp_path: Path) -> Iterator[MailhouseFactory]:
    """Factory of started mailhouse servers (see start_mailhouse); all closed at teardown."""
    servers: list[MailhouseServer] = []

    def make(**kwargs: Any) -> MailhouseServer:
        server = start_mailhouse(tmp_path / f"mailhouse{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        try:
            server.close()
        finally:
            print(server.log_tail(200))


@pytest.fixture
def mailhouse_server(mailhouse_factory: MailhouseFactory) -> MailhouseServer:
    """A started server: smtp listener, domain example.test, users alice and bob."""
    return mailhouse_factory()


@pytest.fixture
def postfix_factory() -> Iterator[PostfixFactory]:
    """Factory of started private Postfix instances (PostfixInstance kwargs); closed after."""
    require_tools("postfix", "postqueue")
    require_root("a private Postfix instance")
    instances: list[PostfixInstance] = []

    def make(**kwargs: Any) -> PostfixInstance:
        instance = PostfixInstance(**kwargs)
        instances.append(instance)
        instance.start()
        return instance

    yield make
    for instance in instances:
        try:
            print(instance.maillog()[-4000:])
        finally:
            instance.close()
