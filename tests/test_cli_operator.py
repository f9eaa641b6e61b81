"""`mailhouse operator …`: operators with Argon2 passwords, every change in the audit log with
the Unix user who made it; bad names and passwords refused before the store opens."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from argon2 import PasswordHasher

import mailhouse.__main__ as cli
from mailhouse import cli_operator
from mailhouse.config import Config, load_config
from mailhouse.service.operators import OPERATOR_PASSWORD_MIN
from mailhouse.store import open_store
from tests.helpers.cli import run_group


def root_config(tmp_path: Path) -> Config:
    """A config whose CLI stays root (tests run as root): no privilege drop."""
    path = tmp_path / "mailhouse.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    'user = "root"\n')
    return load_config(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return root_config(tmp_path)


def mh(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Config,
       *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    run = run_group(cli_operator.register, capsys, config, *argv)
    return run.code, run.out, run.err


def test_add_list_passwd_remove_and_the_audit_log(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        config: Config) -> None:
    monkeypatch.setattr(cli_operator, "actor", lambda: "cli:root (sudo ann)")
    assert mh(capsys, monkeypatch, config, "operator", "list")[1].startswith("no operators")
    code, out, _ = mh(capsys, monkeypatch, config, "operator", "add", "ann",
                      "--password-stdin", stdin="first secret\n")
    assert (code, out) == (0, "added operator ann\n")
    code, _, err = mh(capsys, monkeypatch, config, "operator", "add", "ann",
                      "--password-stdin", stdin="again, longer\n")
    assert code == 1 and "exists already" in err
    assert mh(capsys, monkeypatch, config, "operator", "passwd", "ann", "--password-stdin",
              stdin="second secret\n")[0] == 0

    async def stored_hash() -> str:
        store = open_store(config.data_dir)
        await store.open()
        try:
            admin = await store.get_admin("ann")
            assert admin is not None
            return admin.password_hash
        finally:
            await store.close()

    stored = asyncio.run(stored_hash())
    assert stored.startswith("$argon2id$") and PasswordHasher().verify(stored, "second secret")
    code, out, _ = mh(capsys, monkeypatch, config, "operator", "list")
    assert code == 0 and out.splitlines()[1].split()[0] == "ann"
    assert mh(capsys, monkeypatch, config, "operator", "remove", "ann")[0] == 0
    code, _, err = mh(capsys, monkeypatch, config, "operator", "remove", "ann")
    assert code == 1 and "no operator ann" in err
    code, out, _ = mh(capsys, monkeypatch, config, "operator", "audit")
    lines = out.splitlines()
    assert lines[0].split() == ["WHEN", "WHO", "WHAT", "DETAIL"]
    assert [line.split()[-2:] for line in lines[1:]] == [
        ["operator.remove", "ann"], ["operator.password", "ann"], ["operator.add", "ann"]]
    assert all("cli:root (sudo ann)" in line for line in lines[1:])


@pytest.mark.parametrize("name", ["Ann", "a b", "../x", "x" * 65])
def test_bad_names_are_refused_before_a_password_is_asked(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, config: Config,
        name: str) -> None:
    code, _, err = mh(capsys, monkeypatch, config, "operator", "add", name, "--password-stdin",
                      stdin="secret\n")
    assert code == 2 and "not an admin name" in err
    assert not config.data_dir.exists()  # the store was never opened


def test_empty_password_and_bad_limit(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    code, _, err = mh(capsys, monkeypatch, config, "operator", "add", "ann", "--password-stdin",
                      stdin="\n")
    assert code == 2 and "no password" in err
    code, _, err = mh(capsys, monkeypatch, config, "operator", "add", "ann", "--password-stdin",
                      stdin="x" * (OPERATOR_PASSWORD_MIN - 1) + "\n")
    assert code == 2 and f"at least {OPERATOR_PASSWORD_MIN} characters" in err
    assert not config.data_dir.exists()  # refused before the store opened
    assert mh(capsys, monkeypatch, config, "operator", "audit", "--limit", "0")[0] == 2


def test_wired_into_the_mailhouse_command(tmp_path: Path, config: Config,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["operator", "list", "--config", str(tmp_path / "mailhouse.toml")]) == 0
    assert "no operators" in capsys.readouterr().out
    assert cli_operator.actor().startswith("cli:")


def test_every_account_change_is_audited(tmp_path: Path, config: Config,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    toml = str(tmp_path / "mailhouse.toml")
    monkeypatch.setattr("sys.stdin", io.StringIO("a password\n"))
    for argv in (["domain", "add", "example.org"],
                 ["user", "add", "ann@example.org", "--password-stdin"],
                 ["user", "quota", "ann@example.org", "1G"],
                 ["alias", "add", "info@example.org", "ann@example.org"],
                 ["alias", "remove", "info@example.org"],
                 ["user", "remove", "ann@example.org"],
                 ["domain", "remove", "example.org"]):
        assert cli.main([*argv, "--config", toml]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["operator", "audit", "--config", toml]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    expected = ["domain.remove", "user.remove", "alias.remove", "alias.set", "user.quota",
                "user.add", "domain.add"]
    assert len(lines) == len(expected)
    assert all(f" {action} " in line for action, line in zip(expected, lines, strict=True))
    assert "ann@example.org 1073741824" in lines[4]
    assert all(cli_operator.actor() in line for line in lines)
    assert "info@example.org -> ann@example.org" in lines[3]
