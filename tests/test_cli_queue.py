"""`mailhouse queue list|show|flush|retry|delete|bounce` against a real embedded store in a
temporary data_dir, through the module's own store runner (as the wired command uses it)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import mailhouse.__main__ as cli
from mailhouse.cli_queue import register
from mailhouse.config import Config, load_config
from mailhouse.store import open_store
from mailhouse.store.base import QueuedMessage, QueueRequest, RecipientStatus, RecipientUpdate
from tests.helpers.cli import Run, run_group

MESSAGE = b"From: alice@example.org\r\nSubject: queued\r\n\r\nhello\r\n"
LATER = 4_000_000_000.0  # 2096-10-02T07:06:40Z


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "mailhouse.toml"
    # user = "root": run as root, the commands stay root (never switch this test process).
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    'user = "root"\n')
    return load_config(path)


def mh(capsys: pytest.CaptureFixture[str], config: Config, *argv: str) -> Run:
    """The queue commands' handlers, as wired (tests/helpers/cli.py)."""
    return run_group(register, capsys, config, *argv)


def store_do(config: Config, job: str, *args: object) -> object:
    async def go() -> object:
        store = open_store(config.data_dir)
        await store.open()
        try:
            if job == "enqueue":
                sender, recipients, not_before = args
                assert isinstance(sender, str) and isinstance(recipients, tuple)
                spool = store.new_spool()
                await spool.write(MESSAGE)
                await store.deliver(spool, [], queue=QueueRequest(
                    sender, recipients, body_8bit=True,
                    not_before=not_before if isinstance(not_before, float) else None))
                return max(m.id for m in await store.queue_list())
            if job == "update":
                queue_id, updates = args
                assert isinstance(queue_id, int) and isinstance(updates, list)
                await store.queue_update(queue_id, updates)
                return None
            if job == "get":
                assert isinstance(args[0], int)
                return await store.queue_get(args[0])
            raise AssertionError(job)
        finally:
            await store.close()

    return asyncio.run(go())


def enqueue(config: Config, recipients: Sequence[str], sender: str = "alice@example.org",
            not_before: float | None = LATER) -> int:
    queue_id = store_do(config, "enqueue", sender, tuple(recipients), not_before)
    assert isinstance(queue_id, int)
    return queue_id


def get(config: Config, queue_id: int) -> QueuedMessage | None:
    found = store_do(config, "get", queue_id)
    assert found is None or isinstance(found, QueuedMessage)
    return found


def test_list_empty(capsys: pytest.CaptureFixture[str], config: Config) -> None:
    run = mh(capsys, config, "queue", "list")
    assert (run.code, run.out) == (0, "the queue is empty\n")


def test_list_and_show(capsys: pytest.CaptureFixture[str], config: Config) -> None:
    first = enqueue(config, ["bob@remote.example", "carol@other.example"])
    store_do(config, "update", first, [
        RecipientUpdate("bob@remote.example", RecipientStatus.PENDING, LATER,
                        "451 4.7.1 Greylisted"),
        RecipientUpdate("carol@other.example", RecipientStatus.DELIVERED, 0, "250 2.0.0 Ok"),
    ])
    bounce = enqueue(config, ["alice@remote.example"], sender="")

    run = mh(capsys, config, "queue", "list")  # mailq's view: recipients under each message
    assert run.code == 0
    header, one, bob, carol, two, alice, total = run.out.splitlines()
    assert header.split() == ["ID", "ARRIVED", "SIZE", "SENDER", "/", "RECIPIENT", "STATUS",
                              "NEXT", "ATTEMPT", "LAST", "REPLY"]
    assert one.split()[0] == str(first) and "<alice@example.org>" in one
    assert one.endswith("1/2 pending")
    assert bob.split()[:3] == ["bob@remote.example", "pending", "2096-10-02T07:06:40Z"]
    assert bob.endswith("451 4.7.1 Greylisted") and bob.startswith(" ")
    assert carol.split()[:3] == ["carol@other.example", "delivered", "-"]
    assert carol.endswith("250 2.0.0 Ok")
    assert two.split()[0] == str(bounce) and "<>" in two and two.endswith("1/1 pending")
    assert alice.split()[:2] == ["alice@remote.example", "pending"] and alice.endswith("-")
    # The columns line up: each recipient's address starts two places into the sender column.
    column = header.index("SENDER")
    assert one.index("<alice") == column and bob.index("bob@") == column + 2
    assert all(line == line.rstrip() for line in run.out.splitlines())
    assert total == "2 messages, 3 recipients"

    run = mh(capsys, config, "queue", "show", str(first))
    assert run.code == 0
    assert f"id:           {first}\n" in run.out
    assert "sender:       <alice@example.org>\n" in run.out
    assert "needs:        8BITMIME\n" in run.out
    assert "delay notice: not sent\n" in run.out
    lines = run.out.splitlines()
    bob = next(line for line in lines if "bob@remote.example" in line).split()
    assert bob[:4] == ["bob@remote.example", "pending", "1", "2096-10-02T07:06:40Z"]
    carol = next(line for line in lines if "carol@other.example" in line).split()
    assert carol[:4] == ["carol@other.example", "delivered", "1", "-"]


def test_show_message_prints_the_bytes(capsysbinary: pytest.CaptureFixture[bytes],
                                       config: Config) -> None:
    queue_id = enqueue(config, ["bob@remote.example"])
    parser = argparse.ArgumentParser(prog="mailhouse")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["queue", "show", str(queue_id), "--message"])
    assert args.handler(args, config) == 0
    assert capsysbinary.readouterr().out == MESSAGE


def test_unknown_ids_fail_with_exit_1(capsys: pytest.CaptureFixture[str],
                                      config: Config) -> None:
    for action in ("show", "retry", "delete", "bounce"):
        run = mh(capsys, config, "queue", action, "4242")
        assert run.code == 1, action
        assert run.out == ""
        assert run.err == ("mailhouse: no queued message 4242 (delivered, bounced or "
                           "deleted?); see `mailhouse queue list`\n")


@pytest.mark.parametrize("bad", ["0", "-3", "x", "1.5"])
def test_bad_ids_are_usage_errors(capsys: pytest.CaptureFixture[str], config: Config,
                                  bad: str) -> None:
    run = mh(capsys, config, "queue", "delete", bad)
    assert run.code == 2
    assert "not a queue id" in run.err


def test_flush_and_retry_make_recipients_due(capsys: pytest.CaptureFixture[str],
                                             config: Config) -> None:
    one = enqueue(config, ["a@x.example", "b@y.example"])
    two = enqueue(config, ["c@z.example"])
    before = time.time()

    run = mh(capsys, config, "queue", "retry", str(one))
    assert (run.code, run.out) == (0, f"message {one}: 2 recipients due now\n")
    message = get(config, one)
    assert message is not None
    assert all(before <= r.next_attempt <= time.time() for r in message.recipients)
    untouched = get(config, two)
    assert untouched is not None and untouched.recipients[0].next_attempt == LATER

    run = mh(capsys, config, "queue", "flush")
    assert run.code == 0
    assert run.out == "3 recipients due now; a running server tries them within a second\n"
    flushed = get(config, two)
    assert flushed is not None and flushed.recipients[0].next_attempt <= time.time()


def test_delete(capsys: pytest.CaptureFixture[str], config: Config) -> None:
    queue_id = enqueue(config, ["bob@remote.example"])
    run = mh(capsys, config, "queue", "delete", str(queue_id))
    assert run.code == 0
    assert run.out == f"deleted message {queue_id} from the queue (no bounce sent)\n"
    assert get(config, queue_id) is None
    assert mh(capsys, config, "queue", "delete", str(queue_id)).code == 1
    assert list((config.data_dir / "blobs").glob("*/*")) == []


def test_bounce_asks_the_queue_worker(capsys: pytest.CaptureFixture[str],
                                      config: Config) -> None:
    queue_id = enqueue(config, ["a@x.example", "b@y.example"])
    store_do(config, "update", queue_id, [RecipientUpdate(
        "b@y.example", RecipientStatus.DELIVERED, 0.0, "250 ok")])
    before = time.time()
    run = mh(capsys, config, "queue", "bounce", str(queue_id))
    assert run.code == 0
    assert run.out.startswith(f"message {queue_id}: 1 pending recipient to bounce; the queue "
                              "worker fails them and sends the DSN within a second")
    message = get(config, queue_id)
    assert message is not None and message.bounce_requested
    [pending] = [r for r in message.recipients if r.status is RecipientStatus.PENDING]
    assert before <= pending.next_attempt <= time.time()  # due now: the worker acts at once
    run = mh(capsys, config, "queue", "show", str(queue_id))
    assert "bounce:       requested" in run.out


def test_storage_errors_are_one_line(capsys: pytest.CaptureFixture[str], config: Config) -> None:
    config.data_dir.parent.mkdir(parents=True, exist_ok=True)
    config.data_dir.write_text("not a directory")
    run = mh(capsys, config, "queue", "list")
    assert run.code == 1
    assert run.err.startswith("mailhouse: ") and len(run.err.splitlines()) == 1


def test_wired_into_the_mailhouse_command(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path, config: Config) -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "queue" in commands.choices
    queue_id = enqueue(config, ["bob@remote.example"])
    code = cli.main(["queue", "list", "--config", str(tmp_path / "mailhouse.toml")])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[1].split()[0] == str(queue_id)
    code = cli.main(["--config", str(tmp_path / "mailhouse.toml"), "queue", "delete",
                     str(queue_id)])
    assert code == 0


def test_queue_changes_are_audited(capsys: pytest.CaptureFixture[str], config: Config) -> None:
    queue_id = enqueue(config, ["bob@remote.example"])
    for argv in (("queue", "flush"), ("queue", "retry", str(queue_id)),
                 ("queue", "bounce", str(queue_id)), ("queue", "delete", str(queue_id))):
        assert mh(capsys, config, *argv).code == 0

    async def audited() -> list[tuple[str, str]]:
        store = open_store(config.data_dir)
        await store.open()
        try:
            return [(e.action, e.detail) for e in await store.list_audit(10)]
        finally:
            await store.close()

    assert asyncio.run(audited()) == [("queue.delete", str(queue_id)),
                                      ("queue.bounce", str(queue_id)),
                                      ("queue.retry", str(queue_id)),
                                      ("queue.flush", "1 recipients")]
