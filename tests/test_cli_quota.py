"""`mailhouse user quota` and the USED/QUOTA columns of `user list`, in-process against one
memory store shared between invocations (quota needs the real store's accounting), and the
size syntax (parse_size / format_size in service/accounts.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mailhouse.__main__ as cli
from mailhouse.model import Directory
from mailhouse.service.accounts import (
    MAX_QUOTA,
    SIZE_UNITS,
    InvalidInput,
    format_size,
    parse_size,
)
from mailhouse.store.memory import MemoryStore
from tests.test_cli import CHEAP, mh


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    shared = MemoryStore()
    monkeypatch.setattr(cli, "_open_store", lambda data_dir: shared)
    monkeypatch.setattr("mailhouse.service.accounts.default_hasher", lambda: CHEAP)
    return shared


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailhouse.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    'user = "root"\n')
    return path


@pytest.fixture
def users(store: MemoryStore, config: Path, capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    assert mh(capsys, config, "domain", "add", "example.test").code == 0
    for user in ("alice", "bob"):
        assert mh(capsys, config, "user", "add", f"{user}@example.test", "--password-stdin",
                  stdin=f"{user}-pw\n", monkeypatch=monkeypatch).code == 0
    return store


def test_set_show_and_list(users: MemoryStore, config: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "user", "quota", "Alice@Example.test", "100M")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "set the quota of alice@example.test to 100M (104857600 octets)",
        "alice@example.test: 0 used of 100M (0%)",
    ]
    assert mh(capsys, config, "user", "quota", "bob@example.test", "1536").code == 0
    result = mh(capsys, config, "user", "list")
    assert result.out.splitlines() == [
        "ADDRESS             MAILBOXES  MESSAGES  USED  QUOTA",
        "alice@example.test  6          0         0     100M",
        "bob@example.test    6          0         0     1.5K",
    ]
    result = mh(capsys, config, "user", "quota", "bob@example.test")
    assert (result.code, result.out) == (0, "bob@example.test: 0 used of 1.5K (0%)\n")
    result = mh(capsys, config, "user", "quota", "bob@example.test", "none")
    assert result.out.splitlines() == ["set the quota of bob@example.test to none",
                                       "bob@example.test: 0 used, no quota"]
    directory = asyncio.run(_directory(users))
    assert list(directory.quotas.values()) == [100 << 20]  # running servers see it


async def _directory(store: MemoryStore) -> Directory:
    await store.open()
    try:
        return await store.directory()
    finally:
        await store.close()


def test_errors(users: MemoryStore, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = mh(capsys, config, "user", "quota", "nobody@example.test", "1G")
    assert result.code == 1 and "no user nobody@example.test" in result.err
    result = mh(capsys, config, "user", "quota", "nobody@example.test")
    assert result.code == 1 and "no user nobody@example.test" in result.err
    for bad in ("-1", "1.5G", "10 MB", "lots", "", "1P", str(MAX_QUOTA + 1), "8388608T"):
        result = mh(capsys, config, "user", "quota", "alice@example.test", bad)
        assert result.code == 2 and ("size" in result.err or "quota" in result.err), bad
    result = mh(capsys, config, "user", "quota", "not an address", "1M")
    assert result.code == 2


def test_import_into_a_full_account_is_reported(users: MemoryStore, config: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Import respects the quota: what does not fit is named, and the command fails."""
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From a Thu Jan  1 00:00:00 2004\nSubject: a\n\nsmall\n"
                     b"From b Thu Jan  1 00:00:01 2004\nSubject: b\n\n" + b"x" * 100 + b"\n")
    assert mh(capsys, config, "user", "quota", "alice@example.test", "50").code == 0
    result = mh(capsys, config, "import", "alice@example.test", "--mbox", str(mbox))
    assert result.code == 1
    assert result.out.startswith("imported 1 message in 1 mailbox")
    assert "message 2" in result.err and "over its account's quota" in result.err
    result = mh(capsys, config, "user", "quota", "alice@example.test", "10")
    assert result.out.splitlines() == [
        "set the quota of alice@example.test to 10 (10 octets)",
        "alice@example.test: 21 used of 10 (210%)",
        "  the account is full: new mail is refused until it uses less",
    ]


def test_size_examples() -> None:
    assert parse_size("0") == 0
    assert parse_size(" 500 ") == 500
    assert parse_size("1k") == 1024
    assert parse_size("100M") == 100 * 1024 * 1024
    assert parse_size("2G") == 2 << 30
    assert parse_size("3t") == 3 << 40
    assert parse_size("NONE") is None
    assert parse_size(str(MAX_QUOTA)) == MAX_QUOTA  # the limit itself, then one more
    with pytest.raises(InvalidInput):
        parse_size(str(MAX_QUOTA + 1))
    with pytest.raises(InvalidInput):
        parse_size("8388608T")  # 2**63 octets
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 100 << 20, 5 << 40)] == [
        "0", "1023", "1K", "1.5K", "100M", "5T"]


@given(st.integers(0, 10**6), st.sampled_from(sorted(SIZE_UNITS)))
def test_sizes_round_trip(number: int, unit: str) -> None:
    octets = number * SIZE_UNITS[unit]
    assert parse_size(f"{number}{unit}") == octets
    assert parse_size(f"{number}{unit.lower()}") == octets
    shown = format_size(octets)
    if "." not in shown:  # exactly a multiple of its unit: printed exactly
        assert parse_size(shown) == octets
    else:  # one decimal, within a twentieth of the unit
        factor = SIZE_UNITS[shown[-1]]
        # rounding to one decimal errs by at most half a tenth (1792 octets is "1.8K")
        assert abs(float(shown[:-1]) * factor - octets) <= factor / 20 * (1 + 1e-9)


@given(st.text(max_size=30))
def test_any_text_is_a_size_or_a_usage_error(text: str) -> None:
    try:
        octets = parse_size(text)
    except InvalidInput:
        return
    assert octets is None or 0 <= octets <= MAX_QUOTA
