"""`mailhouse operator token …`: a token printed once (stdout alone), listed without its
secret, revoked; scopes and expiry checked; every change audited."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from mailhouse import cli_common
from mailhouse.config import Config
from mailhouse.service.api_tokens import ApiTokens
from mailhouse.store import open_store
from mailhouse.store.base import ApiToken
from tests.test_cli_operator import mh, root_config


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return root_config(tmp_path)


def authenticate(config: Config, secret: str) -> ApiToken | None:
    async def check() -> ApiToken | None:
        store = open_store(config.data_dir)
        await store.open()
        try:
            return await ApiTokens(store).authenticate(secret)
        finally:
            await store.close()

    return asyncio.run(check())


def test_add_list_revoke(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                         config: Config) -> None:
    monkeypatch.setattr(cli_common, "actor", lambda: "cli:root")
    assert mh(capsys, monkeypatch, config, "operator", "add", "ann", "--password-stdin",
              stdin="a long secret\n")[0] == 0
    assert mh(capsys, monkeypatch, config, "operator", "token", "list")[1].startswith(
        "no tokens")
    code, out, err = mh(capsys, monkeypatch, config, "operator", "token", "add", "ann",
                        "--scope", "read", "--scope", "queue", "--label", "ci",
                        "--expires", "30")
    assert code == 0 and re.fullmatch(r"mh_[A-Za-z0-9_-]{43}\n", out), out
    assert "not shown again" in err
    token = authenticate(config, out.strip())
    assert token is not None and token.scopes == ("read", "queue") and token.label == "ci"
    assert token.expires is not None and 29 * 86400 < token.expires - token.created <= 30 * 86400
    code, listing, _ = mh(capsys, monkeypatch, config, "operator", "token", "list", "ann")
    assert code == 0 and "read queue" in listing and out.strip() not in listing
    assert mh(capsys, monkeypatch, config, "operator", "token", "list", "bob")[1].startswith(
        "no tokens")
    monkeypatch.setattr("time.time", lambda: token.created + 31 * 86400)
    assert "(expired)" in mh(capsys, monkeypatch, config, "operator", "token", "list")[1]
    monkeypatch.undo()
    monkeypatch.setattr(cli_common, "actor", lambda: "cli:root")
    code, text, _ = mh(capsys, monkeypatch, config, "operator", "token", "revoke",
                       str(token.id))
    assert (code, text) == (0, f"revoked token {token.id} of operator ann\n")
    assert authenticate(config, out.strip()) is None
    code, _, err = mh(capsys, monkeypatch, config, "operator", "token", "revoke", str(token.id))
    assert code == 1 and "no token" in err
    audit = mh(capsys, monkeypatch, config, "operator", "audit")[1]
    assert "token.add" in audit and "token.revoke" in audit and "cli:root" in audit


def test_bad_requests(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                      config: Config) -> None:
    code, _, err = mh(capsys, monkeypatch, config, "operator", "token", "add", "nobody",
                      "--scope", "read")
    assert code == 1 and "no operator nobody" in err
    mh(capsys, monkeypatch, config, "operator", "add", "ann", "--password-stdin",
       stdin="a long secret\n")
    assert mh(capsys, monkeypatch, config, "operator", "token", "add", "ann", "--scope",
              "everything")[0] == 2
    code, _, err = mh(capsys, monkeypatch, config, "operator", "token", "add", "ann", "--scope",
                      "read", "--expires", "0")
    assert code == 2 and "1 to 3650 days" in err
    code, _, err = mh(capsys, monkeypatch, config, "operator", "token", "add", "Bad Name",
                      "--scope", "read")
    assert code == 2 and "not an admin name" in err
