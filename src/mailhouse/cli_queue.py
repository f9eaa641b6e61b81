"""`mailhouse queue list | show ID | flush | retry ID | delete ID | bounce ID`: look at and
steer the outbound queue, whether the server runs or not.

Like every admin command these open the store directly (docs: the CLI and the server share it
through SQLite WAL); what they do is service/queue_admin.py's, as in the admin API.

Exit codes as the rest of the CLI: 0 done, 1 the operation failed (no such message), 2 usage.
Times are printed in UTC, ISO 8601. This module is imported by __main__ (which wires
`register`), so it must not import __main__ back; shared pieces come from cli_common.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from mailhouse.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    actor,
    become_data_dir_owner,
    error,
    out,
    table,
)
from mailhouse.config import Config
from mailhouse.errors import MailError
from mailhouse.service.queue_admin import NoSuchMessage, QueueAdmin
from mailhouse.store.base import QueuedMessage, RecipientStatus, Store

StoreAction = Callable[[Store], Awaitable[int]]
# Opens the store, runs the action, closes it, and maps storage errors to one stderr line and
# an exit code. __main__ may pass its own `_with_store` (its test seam) instead of the default.
StoreRunner = Callable[[Config, StoreAction], int]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
    run: StoreRunner | None = None,
) -> None:
    """Add `queue` and its actions. `parents` carries the shared options (--config) so they
    work after the command word too; `run` is how the store is opened (default:
    `run_with_store`)."""
    runner = run or run_with_store
    queue = subparsers.add_parser("queue", parents=list(parents), help="the outbound queue")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=list(parents), help=help_text)
        parser.set_defaults(handler=partial(handler, run=runner))
        return parser

    add("list", queue_list, "list queued messages")
    show = add("show", queue_show, "show one message: recipients, attempts, last replies")
    show.add_argument("id", metavar="ID", type=_queue_id)
    show.add_argument("--message", action="store_true",
                      help="print the message itself (headers and body) instead")
    add("flush", queue_flush, "try every deferred recipient now")
    retry = add("retry", queue_retry, "try one message's deferred recipients now")
    retry.add_argument("id", metavar="ID", type=_queue_id)
    delete = add("delete", queue_delete, "remove a message without delivering it (no bounce)")
    delete.add_argument("id", metavar="ID", type=_queue_id)
    bounce = add("bounce", queue_bounce,
                 "give up on a message's pending recipients: they fail, the sender gets a DSN")
    bounce.add_argument("id", metavar="ID", type=_queue_id)


def _queue_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a queue id: {text!r} (see `mailhouse queue list`)")
    return value


def run_with_store(config: Config, action: StoreAction) -> int:
    """As the owner of data_dir (cli_common), open the store, run `action`, close."""
    try:
        become_data_dir_owner(config)
        return asyncio.run(_run_with_store(config, action))
    except MailError as exc:
        error(f"storage error: {exc.reply.text}")
        return EXIT_FAILED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        error(f"{where}{exc.strerror or exc}")
        return EXIT_FAILED


async def _run_with_store(config: Config, action: StoreAction) -> int:
    from mailhouse.store import open_store  # the store only when a command runs

    store = open_store(config.data_dir)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


# --- handlers ---------------------------------------------------------------------------------

def queue_list(args: argparse.Namespace, config: Config, *,
               run: StoreRunner = run_with_store) -> int:
    async def action(store: Store) -> int:
        messages = await QueueAdmin(store, actor="").list()
        if not messages:
            out("the queue is empty")
            return EXIT_OK
        rows: list[tuple[str, ...]] = []
        for m in messages:  # mailq's view: each message, then each recipient and its state
            pending = [r for r in m.recipients if r.status is RecipientStatus.PENDING]
            rows.append((str(m.id), _when(m.created), str(m.size), _sender(m),
                         f"{len(pending)}/{len(m.recipients)} pending", "", ""))
            rows += [("", "", "", "  " + r.address, r.status.value,
                      _when(r.next_attempt) if r.status is RecipientStatus.PENDING else "-",
                      r.last_reply or "-") for r in m.recipients]
        table(("ID", "ARRIVED", "SIZE", "SENDER / RECIPIENT", "STATUS", "NEXT ATTEMPT",
               "LAST REPLY"), rows)
        total = sum(len(m.recipients) for m in messages)
        out(f"{_plural(len(messages), 'message')}, {_plural(total, 'recipient')}")
        return EXIT_OK

    return run(config, action)


def queue_show(args: argparse.Namespace, config: Config, *,
               run: StoreRunner = run_with_store) -> int:
    async def action(store: Store) -> int:
        queue = QueueAdmin(store, actor="")
        try:
            if not args.message:
                _show(await queue.get(args.id))
                return EXIT_OK
            out = sys.stdout.buffer
            async for chunk in queue.content(args.id):
                out.write(chunk)
            out.flush()
        except NoSuchMessage:
            return _no_such(args.id)
        return EXIT_OK

    return run(config, action)


def queue_flush(args: argparse.Namespace, config: Config, *,
                run: StoreRunner = run_with_store) -> int:
    who = actor()  # before the privilege drop

    async def action(store: Store) -> int:
        count = await QueueAdmin(store, actor=who).flush()
        out(f"{_plural(count, 'recipient')} due now; a running server tries them within a second")
        return EXIT_OK

    return run(config, action)


def queue_retry(args: argparse.Namespace, config: Config, *,
                run: StoreRunner = run_with_store) -> int:
    who = actor()

    async def action(store: Store) -> int:
        try:
            count = await QueueAdmin(store, actor=who).retry(args.id)
        except NoSuchMessage:
            return _no_such(args.id)
        out(f"message {args.id}: {_plural(count, 'recipient')} due now")
        return EXIT_OK

    return run(config, action)


def queue_delete(args: argparse.Namespace, config: Config, *,
                 run: StoreRunner = run_with_store) -> int:
    who = actor()

    async def action(store: Store) -> int:
        try:
            await QueueAdmin(store, actor=who).delete(args.id)
        except NoSuchMessage:
            return _no_such(args.id)
        out(f"deleted message {args.id} from the queue (no bounce sent)")
        return EXIT_OK

    return run(config, action)


def queue_bounce(args: argparse.Namespace, config: Config, *,
                 run: StoreRunner = run_with_store) -> int:
    who = actor()

    async def action(store: Store) -> int:
        try:
            count = await QueueAdmin(store, actor=who).bounce(args.id)
        except NoSuchMessage:
            return _no_such(args.id)
        out(f"message {args.id}: {_plural(count, 'pending recipient')} to bounce; the queue "
            "worker fails them and sends the DSN within a second (when the server next runs, "
            "if it is stopped)")
        return EXIT_OK

    return run(config, action)


# --- output -----------------------------------------------------------------------------------

def _show(message: QueuedMessage) -> None:
    flags = [name for name, on in (("SMTPUTF8", message.smtputf8),
                                   ("8BITMIME", message.body_8bit)) if on]
    out(f"id:           {message.id}")
    out(f"arrived:      {_when(message.created)}")
    out(f"sender:       {_sender(message)}")
    out(f"size:         {message.size}")
    out(f"needs:        {' '.join(flags) or '-'}")
    out(f"delay notice: {'sent' if message.delay_warned else 'not sent'}")
    if message.bounce_requested:
        out("bounce:       requested (the queue worker fails the pending recipients)")
    out("recipients:")
    rows = [
        (r.address, r.status.value, str(r.attempts),
         _when(r.next_attempt) if r.status is RecipientStatus.PENDING else "-",
         r.last_reply or "-")
        for r in message.recipients
    ]
    table(("  RECIPIENT", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "LAST REPLY"),
          [("  " + row[0], *row[1:]) for row in rows])


def _no_such(queue_id: int) -> int:
    error(f"no queued message {queue_id} (delivered, bounced or deleted?); "
          "see `mailhouse queue list`")
    return EXIT_FAILED


def _sender(message: QueuedMessage) -> str:
    return f"<{message.sender}>"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
