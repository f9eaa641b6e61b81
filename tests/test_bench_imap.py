"""The IMAP benchmarks (bench/imap_*.py) import, parse their options, generate their mail,
and their IMAP client reads responses right, against a scripted server on loopback.

No server is started and nothing is measured here: the benchmarks themselves need root and a
private Dovecot (bench/README.md).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bench import imap_big, imap_client, imap_load, imap_mail, imap_memory, imap_servers
from bench.imap_client import ImapClientError, ImapConnection

# ---------------------------------------------------------------------- options


def test_load_options_default_quick_and_server_choice() -> None:
    params = imap_load.parse_args([])
    assert (params.clients, params.messages, params.rounds) == (20, 300, 20)
    assert params.servers == ("mailhouse", "dovecot")
    quick = imap_load.parse_args(["--quick", "--server", "dovecot"])
    assert (quick.clients, quick.messages, quick.rounds, quick.servers) == (4, 100, 2, ("dovecot",))


@pytest.mark.parametrize(
    "argv",
    [
        ["--clients", "0"],
        ["--clients", str(imap_load.MAX_CLIENTS + 1)],
        ["--messages", "0"],
        ["--rounds", "0"],
        ["--server", "postfix"],
    ],
)
def test_load_refuses_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        imap_load.parse_args(argv)


def test_big_options() -> None:
    assert imap_big.parse_args([]).messages == 100_000
    params = imap_big.parse_args(["--messages", "500", "--server", "mailhouse"])
    assert (params.messages, params.servers) == (500, ("mailhouse",))
    for argv in (["--messages", "0"], ["--messages", str(imap_big.MAX_MESSAGES + 1)]):
        with pytest.raises(SystemExit):
            imap_big.parse_args(argv)


def test_memory_options() -> None:
    params = imap_memory.parse_args([])
    assert (params.connections, params.users, params.mode) == (500, 50, "idle")
    assert imap_memory.parse_args(["--connections", "10", "--users", "50"]).users == 10
    for argv in (["--connections", "0"], ["--users", "0"], ["--mode", "sleep"]):
        with pytest.raises(SystemExit):
            imap_memory.parse_args(argv)


def test_load_client_refuses_a_non_loopback_address() -> None:
    with pytest.raises(SystemExit):
        imap_load.client_main(["192.0.2.1:993", "--users", "a", "--expect", "1"])


# ---------------------------------------------------------------------- tables


def _load_run(server: str, rate: float) -> imap_load.Run:
    ops = {op: {"count": 1, "p50": 0.001, "p95": 0.002, "p99": 0.003, "max": 0.004}
           for op in imap_load.OPS}  # fmt: skip
    return imap_load.Run(server, 1, 10, int(rate), 1.0, 0.5, 0.1, 0.5, ops)


def test_load_table_prints_the_ratio_when_both_ran() -> None:
    params = imap_load.parse_args(["--quick"])
    text = imap_load.table([_load_run("dovecot", 200), _load_run("mailhouse", 100)], params)
    assert "ratio mailhouse/dovecot: 0.50x commands/s" in text
    assert "fetch_headers" in text
    alone = imap_load.table([_load_run("dovecot", 200)], params)
    assert "ratio" not in alone and "dovecot    median 200 commands/s" in alone


def test_big_and_memory_tables() -> None:
    big = imap_big.table(
        [imap_big.Run(name, 1, "SEARCH TEXT", s, s, 0.0, 7) for name, s in
         (("dovecot", 2.0), ("mailhouse", 1.0))],
        imap_big.parse_args(["--messages", "10"]), 1_000_000,
    )  # fmt: skip
    assert "0.50x" in big and "SEARCH TEXT" in big
    refused = imap_big.table(
        [imap_big.Run("dovecot", 1, "SEARCH TEXT", 2.0, 2.0, 0.0, 7),
         imap_big.Run("mailhouse", 1, "SEARCH TEXT", 0.1, 0.1, 0.0, 0, "b4 NO [LIMIT] too big")],
        imap_big.parse_args(["--messages", "10"]), 1_000_000,
    )  # fmt: skip
    assert "refused" in refused and "mailhouse refused SEARCH TEXT: b4 NO [LIMIT]" in refused
    memory = imap_memory.table(
        [imap_memory.Run("dovecot", 10, 1.0, 1000, 3000, 5, 25),
         imap_memory.Run("mailhouse", 10, 1.0, 1000, 1500, 2, 2)],
        imap_memory.parse_args(["--connections", "10"]),
    )  # fmt: skip
    assert "ratio mailhouse/dovecot: 0.25x per connection" in memory


# ---------------------------------------------------------------------- mail, figures


def test_generated_mail_is_deterministic_and_parses() -> None:
    first = list(imap_mail.mailbox(300, "a@bench.test", 3))
    assert first == list(imap_mail.mailbox(300, "a@bench.test", 3))
    assert first != list(imap_mail.mailbox(300, "a@bench.test", 4))
    assert not any(m.seen for m in first[-15:])  # the newest twentieth is unseen
    kinds = set()
    for item in first:
        parsed = email.message_from_bytes(item.data, policy=email.policy.default)
        assert parsed["Message-ID"] and parsed["Date"] and parsed["From"]
        kinds.add(parsed.get_content_type())
    assert kinds == {"text/plain", "multipart/alternative", "multipart/mixed"}
    froms = sum(imap_mail.FROM_NAME.encode() in m.data.split(b"\n\n", 1)[0] for m in first)
    assert 0 < froms < 100


def test_write_maildir_names_carry_the_sizes(tmp_path: Path) -> None:
    items = list(imap_mail.mailbox(20, "a@bench.test", 1))
    assert imap_mail.write_maildir(tmp_path, iter(items)) == (20, sum(len(m.data) for m in items))
    files = [*(tmp_path / "new").iterdir(), *(tmp_path / "cur").iterdir()]
    assert len(files) == 20 and not any((tmp_path / "tmp").iterdir())
    for path in files:
        data = path.read_bytes()
        lines = data.count(b"\n")
        assert f",S={len(data)},W={len(data) + lines}" in path.name
        assert path.name.endswith(":2,S") == (path.parent.name == "cur")


def test_percentiles_use_the_nearest_rank() -> None:
    figures = imap_client.percentiles([float(n) for n in range(100, 0, -1)])
    assert figures == {"count": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert imap_client.percentiles([3.0])["p99"] == 3.0


def test_session_pss_counts_this_session() -> None:
    kib, processes = imap_servers.session_pss(os.getsid(0))
    assert kib > 0 and processes >= 1


def test_mailhouse_caps_are_raised_in_its_one_limits_table(tmp_path: Path) -> None:
    text = imap_servers.BenchMailhouse(tmp_path, protocols=("smtp", "imaps")).config_text()
    assert text.count("[limits]") == 1
    assert "\nmax_connections_per_ip = 10000\n" in text and "\nmax_connections = 10000\n" in text


def test_fd_limit_is_raised_for_the_connections() -> None:
    assert imap_memory.raise_fd_limit(10) >= 10


# ---------------------------------------------------------------------- the client


async def _scripted_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    client: Callable[[int], Awaitable[None]],
) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            await client(port)
    finally:
        server.close()


LITERAL = b"Subject: tricky\r\nb2 OK not the end\r\n* 9 EXISTS {5}\r\n"
APPENDED: list[bytes] = []


async def _imap_script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A scripted IMAP server: literals that look like responses, a reply sent one octet at a
    time, APPEND with a continuation and APPENDUID, IDLE, NO."""
    writer.write(b"* OK scripted\r\n")
    while line := await reader.readline():
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        verb = rest.split(b" ", 1)[0].upper()
        if verb == b"FETCH":
            reply = (b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n%s OK done\r\n"
                     % (len(LITERAL), LITERAL, tag))  # fmt: skip
            for octet in range(len(reply)):
                writer.write(reply[octet : octet + 1])
                await writer.drain()
        elif verb == b"APPEND":
            size = int(rest.rsplit(b"{", 1)[1].rstrip(b"}"))
            writer.write(b"+ go ahead\r\n")
            APPENDED.append((await reader.readexactly(size + 2))[:-2])
            writer.write(tag + b" OK [APPENDUID 7 42] APPEND done\r\n")
        elif verb == b"IDLE":
            writer.write(b"+ idling\r\n")
            await reader.readline()
            writer.write(tag + b" OK IDLE done\r\n")
        elif verb == b"SEARCH":
            writer.write(b"* SEARCH 2 4 6\r\n" + tag + b" OK done\r\n")
        elif verb == b"LOGOUT":
            writer.write(b"* BYE\r\n" + tag + b" OK bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(tag + b" NO not here\r\n")
        await writer.drain()
    writer.close()


def test_client_reads_literals_continuations_and_tags() -> None:
    async def client(port: int) -> None:
        conn = await ImapConnection.connect("127.0.0.1", port, None, timeout=5)
        kept = await conn.command(b"FETCH 1 BODY[]")
        assert kept.ok and kept.count == 1
        assert kept.untagged == [b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(LITERAL), LITERAL)]
        counted = await conn.command(b"FETCH 1 BODY[]", keep=False)
        assert counted.count == 1 and counted.untagged == []
        assert (await conn.command(b"SEARCH ALL")).search_numbers() == [2, 4, 6]
        appended = await conn.append(b"INBOX", b"\\Seen", b"hello\r\nworld")
        assert appended.append_uid() == 42 and APPENDED[-1] == b"hello\r\nworld"
        assert 0 <= await conn.idle(0.01) < 5
        with pytest.raises(ImapClientError, match="NO not here"):
            await conn.command(b"NOOP")
        assert not (await conn.command(b"NOOP", check=False)).ok
        assert (await conn.command(b"LOGOUT", keep=False)).count == 1
        conn.close()

    asyncio.run(_scripted_server(_imap_script, client))


def test_client_refuses_a_literal_over_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_client, "MAX_LITERAL", 10)

    async def client(port: int) -> None:
        conn = await ImapConnection.connect("127.0.0.1", port, None, timeout=5)
        with pytest.raises(ImapClientError, match="a literal of"):
            await conn.command(b"FETCH 1 BODY[]")

    asyncio.run(_scripted_server(_imap_script, client))


def test_client_times_out_on_a_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK silent\r\n")
        await reader.read()  # never answers
        writer.close()

    async def client(port: int) -> None:
        conn = await ImapConnection.connect("127.0.0.1", port, None, timeout=0.2)
        with pytest.raises(ImapClientError, match="no reply"):
            await conn.command(b"NOOP")
        conn.close()

    asyncio.run(_scripted_server(silent, client))


def test_reply_status_words() -> None:
    assert imap_client.Reply(b"b1 ok done").ok
    assert imap_client.Reply(b"b2 NO [LIMIT] too much").status == b"NO"
    assert not imap_client.Reply(b"b3 BAD what").ok
    assert imap_client.Reply(b"garbage").status == b""
