"""The `mailhouse` command end to end: in-process `main([...])` against a fake store shared
between invocations (as the real store's files would be), and once as a real subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from argon2 import PasswordHasher

import mailhouse.__main__ as cli
from mailhouse.service.accounts import Passwords
from tests.service.fake_store import FakeStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    shared = FakeStore()
    opened: list[Path] = []

    def fake_open_store(data_dir: Path) -> FakeStore:
        opened.append(data_dir)
        return shared

    monkeypatch.setattr(cli, "_open_store", fake_open_store)
    monkeypatch.setattr("mailhouse.service.accounts.default_hasher", lambda: CHEAP)
    shared.opened_dirs = opened  # type: ignore[attr-defined]
    return shared


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailhouse.toml"
    # user = "root": run as root, the commands stay root (never switch this test process).
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    'user = "root"\n')
    return path


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def mh(capsys: pytest.CaptureFixture[str], config: Path | None, *args: str,
       stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> Run:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    argv = (["--config", str(config)] if config is not None else []) + list(args)
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return Run(code, captured.out, captured.err)


@pytest.fixture
def populated(store: FakeStore, config: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    assert mh(capsys, config, "domain", "add", "example.test").code == 0
    for user in ("alice", "bob"):
        assert mh(capsys, config, "user", "add", f"{user}@example.test", "--password-stdin",
                  stdin=f"{user}-pw\n", monkeypatch=monkeypatch).code == 0
    return store


# --- domains ----------------------------------------------------------------------------------

def test_domain_add_list_remove(store: FakeStore, config: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "domain", "add", "Example.TEST")
    assert result.code == 0
    assert result.out.startswith("added domain example.test\nDKIM keys for example.test: ")
    assert (tmp_path / "data" / "dkim" / "example.test").is_dir()
    assert store.opened_dirs == [tmp_path / "data"]  # type: ignore[attr-defined]
    assert store.opened == store.closed == 1
    mh(capsys, config, "domain", "add", "bücher.example")
    result = mh(capsys, config, "domain", "list")
    assert result.out.splitlines() == [
        "DOMAIN                 USERS  ALIASES",
        "example.test           0      0",
        "xn--bcher-kva.example  0      0",
    ]
    assert mh(capsys, config, "domain", "remove", "bücher.example").code == 0
    result = mh(capsys, config, "domain", "remove", "bücher.example")
    assert result.code == 1 and "not one of our domains" in result.err
    result = mh(capsys, config, "domain", "add", "not a domain")
    assert result.code == 2 and "not a valid domain" in result.err


def test_domain_with_users_is_kept(populated: FakeStore, config: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "domain", "remove", "example.test")
    assert result.code == 1 and "still has 2 users" in result.err
    assert "example.test" in populated.domains


# --- users ------------------------------------------------------------------------------------

def test_user_add_with_password_stdin(populated: FakeStore, config: Path,
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    result = mh(capsys, config, "user", "add", "Carol@Example.test", "--password-stdin",
                stdin="pass word\r\nignored\n", monkeypatch=monkeypatch)
    assert (result.code, result.out) == (0, "added user carol@example.test\n")
    stored = populated.accounts["carol@example.test"].password_hash
    assert Passwords(CHEAP).verify(stored, "pass word")


def test_user_add_prompts_twice(store: FakeStore, config: Path,
                                capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    mh(capsys, config, "domain", "add", "example.test")
    answers = iter(["secret", "secret", "one", "other"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert mh(capsys, config, "user", "add", "dave@example.test").code == 0
    assert prompts == ["Password: ", "Repeat password: "]
    result = mh(capsys, config, "user", "add", "erin@example.test")
    assert result.code == 1 and "do not match" in result.err
    assert "erin@example.test" not in store.accounts


def test_user_add_errors(populated: FakeStore, config: Path,
                         capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    result = mh(capsys, config, "user", "add", "x@other.test", "--password-stdin",
                stdin="pw\n", monkeypatch=monkeypatch)
    assert result.code == 1
    assert "mailhouse domain add other.test" in result.err
    result = mh(capsys, config, "user", "add", "ALICE@example.test", "--password-stdin",
                stdin="pw\n", monkeypatch=monkeypatch)
    assert result.code == 1 and "already exists" in result.err
    result = mh(capsys, config, "user", "add", "new@example.test", "--password-stdin",
                stdin="\n", monkeypatch=monkeypatch)
    assert result.code == 2 and "no password" in result.err
    result = mh(capsys, config, "user", "add", "not-an-address", "--password-stdin",
                stdin="pw\n", monkeypatch=monkeypatch)
    assert result.code == 2 and "not a valid address" in result.err


def test_user_passwd_remove_list(populated: FakeStore, config: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    result = mh(capsys, config, "user", "passwd", "Alice@example.test", "--password-stdin",
                stdin="new-pw\n", monkeypatch=monkeypatch)
    assert (result.code, result.out) == (0, "changed the password of alice@example.test\n")
    assert Passwords(CHEAP).verify(populated.accounts["alice@example.test"].password_hash,
                                   "new-pw")
    result = mh(capsys, config, "user", "passwd", "nobody@example.test", "--password-stdin",
                stdin="x\n", monkeypatch=monkeypatch)
    assert result.code == 1 and "no user nobody@example.test" in result.err

    result = mh(capsys, config, "user", "list")
    assert result.out.splitlines() == [
        "ADDRESS             MAILBOXES  MESSAGES  USED  QUOTA",
        "alice@example.test  6          0         0     none",
        "bob@example.test    6          0         0     none",
    ]
    mh(capsys, config, "alias", "add", "team@example.test", "alice@example.test",
       "bob@example.test")
    result = mh(capsys, config, "user", "remove", "bob@example.test")
    assert result.code == 0
    assert result.out.splitlines() == [
        "removed user bob@example.test and all its mail",
        "  removed bob@example.test from the targets of alias team@example.test",
    ]
    assert mh(capsys, config, "user", "remove", "bob@example.test").code == 1


# --- aliases ----------------------------------------------------------------------------------

def test_aliases(populated: FakeStore, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "alias", "add", "Team@example.test", "alice@example.test",
                "BOB@example.test")
    assert (result.code, result.out) == (
        0, "alias team@example.test -> alice@example.test, bob@example.test\n")
    assert mh(capsys, config, "alias", "add", "@example.test", "alice@example.test").code == 0
    result = mh(capsys, config, "alias", "list")
    assert result.out.splitlines() == [
        "ALIAS              TARGETS",
        "@example.test      alice@example.test",
        "team@example.test  alice@example.test, bob@example.test",
    ]
    result = mh(capsys, config, "alias", "add", "fwd@example.test", "x@elsewhere.test")
    assert result.code == 1 and "outbound delivery" in result.err
    assert mh(capsys, config, "alias", "remove", "@example.test").code == 0
    result = mh(capsys, config, "alias", "remove", "@example.test")
    assert result.code == 1 and "no alias" in result.err
    assert mh(capsys, config, "alias", "add", "x@example.test").code == 2  # no target


# --- export / import --------------------------------------------------------------------------

def test_import_and_export(populated: FakeStore, config: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From a Thu Jan  1 00:00:00 2004\nSubject: a\n\n>From x\n\n"
                     b"From b Thu Jan  1 00:00:01 2004\nSubject: b\n\nb\n")
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox))
    assert result.code == 0, result.err
    assert result.out == f"imported 2 messages in 1 mailbox from {mbox} into alice@example.test\n"
    assert populated.stored("alice@example.test") == [b"Subject: a\r\n\r\nFrom x\r\n",
                                                      b"Subject: b\r\n\r\nb\r\n"]
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox),
                "--mailbox", "Archive")
    assert result.code == 0
    assert len(populated.stored("alice@example.test", "Archive")) == 2

    out = tmp_path / "export"
    result = mh(capsys, config, "export", "Alice@example.test", "--maildir", str(out))
    assert result.code == 0
    assert result.out == f"exported 4 messages in 6 mailboxes to {out}\n"
    names = sorted(p.name for p in (out / "cur").iterdir())
    assert len(names) == 2 and all(".mx.example.test," in n for n in names)
    assert (out / "cur" / names[0]).read_bytes() == b"Subject: a\n\nFrom x\n"
    assert len(list((out / ".Archive" / "cur").iterdir())) == 2

    result = mh(capsys, config, "import", "bob@example.test", "--maildir", str(out))
    assert result.code == 0
    assert result.out.startswith("imported 4 messages in 6 mailboxes from")
    assert populated.stored("bob@example.test") == populated.stored("alice@example.test")


def test_transfer_errors(populated: FakeStore, config: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "export", "nobody@example.test", "--maildir", str(tmp_path / "x"))
    assert result.code == 1 and "no user nobody@example.test" in result.err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").touch()
    result = mh(capsys, config, "export", "alice@example.test", "--maildir",
                str(tmp_path / "busy"))
    assert result.code == 1 and "not empty" in result.err
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(tmp_path / "no"))
    assert result.code == 1 and "cannot open" in result.err
    result = mh(capsys, config, "import", "alice@example.test", "--maildir", str(tmp_path),
                "--mailbox", "X")
    assert result.code == 2 and "--mailbox goes with --mbox" in result.err
    assert mh(capsys, config, "import", "alice@example.test").code == 2
    # A partial import is reported and fails the command.
    md = tmp_path / "md"
    (md / "cur").mkdir(parents=True)
    (md / "cur" / "1.M1P1Q1.h:2,S").write_bytes(b"Subject: ok\n\n")
    (md / ".Missing" / "cur").mkdir(parents=True)
    (md / ".Missing" / "cur" / "1.M1P1Q1.h:2,S").write_bytes(b"Subject: lost\n\n")
    result = mh(capsys, config, "import", "alice@example.test", "--maildir", str(md))
    assert result.code == 1 and "'Missing'" in result.err
    assert result.out.startswith("imported 1 message in 1 mailbox")


# --- usage, config, plumbing ------------------------------------------------------------------

def test_usage_errors_exit_2(store: FakeStore, config: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert mh(capsys, config).code == 2
    assert mh(capsys, config, "bogus").code == 2
    assert mh(capsys, config, "user").code == 2
    assert mh(capsys, config, "export", "a@example.test").code == 2  # --maildir is required
    result = mh(capsys, config, "--help")
    assert result.code == 0 and "domain" in result.out
    result = mh(capsys, None, "--version")
    assert result.code == 0 and result.out.startswith("mailhouse ")


def test_config_error_names_the_key(store: FakeStore, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nmax_recipients = "abc"\n')
    result = mh(capsys, bad, "domain", "list")
    assert result.code == 2
    assert result.err == ("mailhouse: config error: limits.max_recipients: expected an integer "
                          ">= 1, got 'abc'\n")
    result = mh(capsys, tmp_path / "absent.toml", "domain", "list")
    assert result.code == 2 and "no such config file" in result.err


def test_config_option_after_the_command_and_from_environment(
        store: FakeStore, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["domain", "list", "--config", str(config)]) == 0
    monkeypatch.setenv("MAILHOUSE_CONFIG", str(config))
    assert cli.main(["domain", "list"]) == 0
    assert store.opened_dirs == [tmp_path / "data"] * 2  # type: ignore[attr-defined]


def test_without_config_the_try_it_now_data_dir_is_used(
        store: FakeStore, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILHOUSE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert mh(capsys, None, "domain", "list").code == 0
    assert store.opened_dirs == [(tmp_path / "mailhouse-data").resolve()]  # type: ignore[attr-defined]


def test_serve_delegates_to_the_app(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    fake_app = types.ModuleType("mailhouse.app")

    def serve(config: object) -> int:
        seen.append(config)
        return 7

    fake_app.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mailhouse.app", fake_app)
    assert cli.main(["--config", str(config), "serve"]) == 7
    [served] = seen
    assert served.hostname == "mx.example.test"  # type: ignore[attr-defined]


def test_storage_failures_are_one_line(config: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data_dir: Path) -> FakeStore:
        raise PermissionError(13, "Permission denied", str(data_dir))

    monkeypatch.setattr(cli, "_open_store", broken)
    result = mh(capsys, config, "domain", "list")
    assert result.code == 1
    assert result.err.endswith("data: Permission denied\n")


# --- as a real program ------------------------------------------------------------------------

def python_m(*args: str, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "MAILHOUSE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "mailhouse", *args], input=stdin, cwd=cwd,
                          capture_output=True, timeout=60, env=env, check=False)


def test_python_m_mailhouse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_recipent = 5\n")
    result = python_m("--config", str(bad), "user", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode() == ("mailhouse: config error: limits.max_recipent: unknown key "
                                      "(did you mean limits.max_recipients?)\n")
    assert b"Traceback" not in result.stderr

    good = tmp_path / "good.toml"
    good.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    'user = "root"\n')
    steps = [
        (("domain", "add", "example.test"), b"", 0),
        (("user", "add", "alice@example.test", "--password-stdin"), b"pw\n", 0),
        (("user", "add", "alice@example.test", "--password-stdin"), b"pw\n", 1),
        (("user", "add", "x@other.test", "--password-stdin"), b"pw\n", 1),
        (("user", "list"), b"", 0),
    ]
    for args, stdin, code in steps:
        result = python_m("--config", str(good), *args, cwd=tmp_path, stdin=stdin)
        assert result.returncode == code, (args, result.stderr)
        assert b"Traceback" not in result.stderr
    assert b"alice@example.test" in result.stdout
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From a Thu Jan  1 00:00:00 2004\nSubject: hi\n\n>From me\n")
    result = python_m("--config", str(good), "import", "alice@example.test", "--mbox", str(mbox),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = python_m("--config", str(good), "export", "alice@example.test", "--maildir",
                      str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [exported] = (tmp_path / "out" / "cur").iterdir()
    assert exported.read_bytes() == b"Subject: hi\n\nFrom me\n"
