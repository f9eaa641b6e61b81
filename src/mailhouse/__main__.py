"""The `mailhouse` command: run the server, administer domains, users and aliases, move mail in
and out as files.

Administration commands open the store directly rather than talking to a running server: SQLite
in WAL mode lets both write at once, and the server notices directory changes by polling the
store's directory serial. So they work the same whether the server runs or not, and need no
control socket or credentials beyond file access.

Exit codes: 0 done, 1 the operation failed (user exists, no such alias …), 2 usage or config
error. Operator mistakes print one line on stderr, never a traceback.

argparse (stdlib) rather than typer/click: the command set is small and flat, and the console
script then starts without third-party imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mailhouse import (
    __version__,
    cli_backup,
    cli_cert,
    cli_dns,
    cli_doctor,
    cli_healthcheck,
    cli_operator,
    cli_queue,
    cli_trace,
    cli_transfer,
)
from mailhouse.cli_common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, actor
from mailhouse.cli_common import become_data_dir_owner as _become_data_dir_owner
from mailhouse.cli_common import error as _error
from mailhouse.cli_common import out as _out
from mailhouse.cli_common import read_password as _read_password
from mailhouse.cli_common import table as _table
from mailhouse.config import ENV_CONFIG, Config, config_path, load_config
from mailhouse.errors import ConfigError, MailError
from mailhouse.privileges import UMASK, fix_permissions, service_account
from mailhouse.service.accounts import (
    AccountError,
    Accounts,
    InvalidInput,
    Removal,
    UserSummary,
    canonical_address,
    format_size,
    parse_size,
)
from mailhouse.service.mailfiles import (
    INBOX,
    MailFileError,
    export_maildir,
    import_maildir,
    import_mbox,
)
from mailhouse.store.base import Store

Handler = Callable[[argparse.Namespace, Config], int]
StoreAction = Callable[[Store], Awaitable[int]]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m mailhouse`; returns the exit code."""
    previous = os.umask(UMASK)  # before anything is created: every file of ours is private
    try:
        return _main(argv)
    finally:
        os.umask(previous)  # for callers in the same process (tests)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = load_config(config_path(getattr(args, "config", None)))
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return EXIT_USAGE
    handler: Handler = args.handler
    global _ACTOR
    _ACTOR = actor()  # before any command drops privileges
    try:
        return handler(args, config)
    except ConfigError as exc:  # e.g. data_dir belongs to another user (privileges.py)
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


_ACTOR = "cli"  # who runs this command (`cli:root`); set in _main, before any privilege drop


def _accounts(store: Store) -> Accounts:
    """The account service, every change it makes written to the audit log as ours."""
    return Accounts(store, actor=_ACTOR)


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before and after the command word ("mailhouse user list --config
    # x"); SUPPRESS keeps a later absence from overwriting an earlier value. The action object
    # is shared by every parser built from `common`: never set_defaults(config=…) on one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file (default: ${ENV_CONFIG}, else try-it-now defaults)")
    parser = argparse.ArgumentParser(
        prog="mailhouse", parents=[common],
        description="A mail server: SMTP in and out, IMAP and POP3.",
        epilog="exit status: 0 done, 1 the operation failed, 2 usage or config error")
    parser.add_argument("--version", action="version", version=f"mailhouse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the server in the foreground")
    serve.set_defaults(handler=_serve)

    domain = commands.add_parser("domain", parents=[common], help="domains we receive mail for")
    domain_cmds = domain.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, handler, help_text in (
            ("add", _domain_add, "start receiving mail for DOMAIN"),
            ("remove", _domain_remove, "stop receiving mail for DOMAIN (must have no users)")):
        p = domain_cmds.add_parser(action, parents=[common], help=help_text)
        p.add_argument("domain", metavar="DOMAIN")
        p.set_defaults(handler=handler)
    domain_cmds.add_parser("list", parents=[common], help="list domains").set_defaults(
        handler=_domain_list)

    user = commands.add_parser("user", parents=[common], help="mail accounts")
    user_cmds = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, handler, help_text in (
            ("add", _user_add, "create an account"),
            ("passwd", _user_passwd, "change an account's password")):
        p = user_cmds.add_parser(action, parents=[common], help=help_text)
        p.add_argument("address", metavar="ADDRESS")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
        p.set_defaults(handler=handler)
    p = user_cmds.add_parser("remove", parents=[common], help="delete an account and its mail")
    p.add_argument("address", metavar="ADDRESS")
    p.set_defaults(handler=_user_remove)
    user_cmds.add_parser("list", parents=[common],
                         help="list accounts with their storage use and quota").set_defaults(
        handler=_user_list)
    p = user_cmds.add_parser(
        "quota", parents=[common], help="show or set an account's storage quota",
        description="Without SIZE, show the account's storage use and quota. SIZE is a number "
                    "of octets with an optional K, M, G or T suffix, 1024-based (100M is "
                    "104857600 octets), or `none` for no limit. Lowering it below the use "
                    "removes nothing: new mail is refused until the user frees space.")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("size", metavar="SIZE", nargs="?", help="e.g. 500M, 2G, none")
    p.set_defaults(handler=_user_quota)

    alias = commands.add_parser("alias", parents=[common], help="addresses that forward locally")
    alias_cmds = alias.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = alias_cmds.add_parser("add", parents=[common],
                              help="create ALIAS (or add targets to it); @domain is a catch-all")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("targets", metavar="TARGET", nargs="+")
    p.set_defaults(handler=_alias_add)
    p = alias_cmds.add_parser("remove", parents=[common], help="delete ALIAS")
    p.add_argument("alias", metavar="ALIAS")
    p.set_defaults(handler=_alias_remove)
    alias_cmds.add_parser("list", parents=[common], help="list aliases").set_defaults(
        handler=_alias_list)

    export = commands.add_parser("export", parents=[common],
                                 help="write an account's mail to a Maildir++ directory")
    export.add_argument("address", metavar="ADDRESS")
    export.add_argument("--maildir", metavar="DIR", type=Path, required=True,
                        help="new or empty directory to create")
    export.set_defaults(handler=_export)

    imp = commands.add_parser("import", parents=[common],
                              help="deliver mail from a Maildir++ directory or an mbox file")
    imp.add_argument("address", metavar="ADDRESS")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--maildir", metavar="DIR", type=Path)
    source.add_argument("--mbox", metavar="FILE", type=Path)
    imp.add_argument("--mailbox", metavar="NAME",
                     help="target mailbox for --mbox (default INBOX)")
    imp.set_defaults(handler=_import)

    fix = commands.add_parser(
        "fix-permissions", parents=[common],
        help="as root: hand data_dir to `user` (owner only, 0700/0600), following no link")
    fix.set_defaults(handler=_fix_permissions)

    cli_dns.register(commands, parents=[common])
    cli_queue.register(commands, parents=[common])
    cli_trace.register(commands, parents=[common])
    cli_backup.register(commands, parents=[common])
    cli_doctor.register(commands, parents=[common])
    cli_operator.register(commands, parents=[common])
    cli_cert.register(commands, parents=[common])
    cli_healthcheck.register(commands, parents=[common])
    return parser


# --- serve ------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace, config: Config) -> int:
    # Imported here: the server (and its optional uvloop) is not needed to administer accounts.
    from mailhouse.app import serve

    return serve(config)


# --- fix-permissions --------------------------------------------------------------------------

def _fix_permissions(args: argparse.Namespace, config: Config) -> int:
    """The explicit repair `serve` asks for when data_dir belongs to someone else (an older
    release, or `domain add` run as root before the first start). Never done implicitly."""
    if os.geteuid() != 0:
        _error("fix-permissions changes owners: run it as root")
        return EXIT_USAGE
    account = service_account(config)
    if account is None:
        _error(f"fix-permissions needs `user` in the config (now {config.user!r}): the account "
               "data_dir is handed to")
        return EXIT_USAGE
    try:
        report = fix_permissions(config.data_dir, account)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return EXIT_FAILED
    _out(f"{config.data_dir}: {report.seen} entries belong to {account.name}, owner-only "
         f"({report.changed} changed)")
    for problem in report.skipped:
        _error(f"left alone: {problem}")
    return EXIT_FAILED if report.skipped else EXIT_OK


# --- running an action against the store ------------------------------------------------------

def _open_store(data_dir: Path) -> Store:
    """The store the server uses; a seam for tests."""
    from mailhouse.store import open_store

    return open_store(data_dir)


def _with_store(config: Config, action: StoreAction) -> int:
    """Open the store, run `action`, close; turn operator-facing failures into one stderr line
    and an exit code."""
    code, message = _store_outcome(config, action)
    if message is not None:
        _error(message)
    return code


def _store_outcome(config: Config, action: StoreAction) -> tuple[int, str | None]:
    """`_with_store` without printing: the exit code and the error line, if any (the store
    side of a root export/import hands it to the root parent, cli_transfer.py)."""
    try:
        _become_data_dir_owner(config)
        return asyncio.run(_run_with_store(config.data_dir, action)), None
    except InvalidInput as exc:
        return EXIT_USAGE, str(exc)
    except (AccountError, MailFileError) as exc:
        return EXIT_FAILED, str(exc)
    except MailError as exc:
        return EXIT_FAILED, f"storage error: {exc.reply.text}"
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_FAILED, f"{where}{exc.strerror or exc}"


async def _run_with_store(data_dir: Path, action: StoreAction) -> int:
    store = _open_store(data_dir)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()




# --- domains ----------------------------------------------------------------------------------

def _domain_add(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        domain = await _accounts(store).add_domain(args.domain)
        _out(f"added domain {domain}")
        cli_dns.on_domain_added(config, domain)  # DKIM keys exist from the first moment
        return EXIT_OK

    return _with_store(config, action)


def _domain_remove(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        domain = await _accounts(store).remove_domain(args.domain)
        _out(f"removed domain {domain}")
        return EXIT_OK

    return _with_store(config, action)


def _domain_list(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        rows = [(d.name, str(d.users), str(d.aliases))
                for d in await _accounts(store).list_domains()]
        _table(("DOMAIN", "USERS", "ALIASES"), rows)
        return EXIT_OK

    return _with_store(config, action)


# --- users ------------------------------------------------------------------------------------

def _with_password(args: argparse.Namespace, config: Config,
                   make: Callable[[str], StoreAction]) -> int:
    # The password is read before the store is opened, so a slow typist holds no lock; the
    # address is checked first, so nobody types a password for a typo.
    try:
        canonical_address(args.address)
        password = _read_password(args)
    except InvalidInput as exc:
        _error(str(exc))
        return EXIT_USAGE
    except AccountError as exc:
        _error(str(exc))
        return EXIT_FAILED
    return _with_store(config, make(password))


def _user_add(args: argparse.Namespace, config: Config) -> int:
    def make(password: str) -> StoreAction:
        async def action(store: Store) -> int:
            account = await _accounts(store).add_user(args.address, password)
            _out(f"added user {account.address}")
            return EXIT_OK
        return action

    return _with_password(args, config, make)


def _user_passwd(args: argparse.Namespace, config: Config) -> int:
    def make(password: str) -> StoreAction:
        async def action(store: Store) -> int:
            address = await _accounts(store).set_password(args.address, password)
            _out(f"changed the password of {address}")
            return EXIT_OK
        return action

    return _with_password(args, config, make)


def _user_remove(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        removal = await _accounts(store).remove_user(args.address)
        _out(f"removed user {removal.key} and all its mail")
        _report_alias_changes(removal)
        return EXIT_OK

    return _with_store(config, action)


def _user_list(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        rows = [(u.address, str(u.mailboxes), str(u.messages), format_size(u.used),
                 _limit_text(u.limit)) for u in await _accounts(store).summaries()]
        _table(("ADDRESS", "MAILBOXES", "MESSAGES", "USED", "QUOTA"), rows)
        return EXIT_OK

    return _with_store(config, action)


def _user_quota(args: argparse.Namespace, config: Config) -> int:
    try:  # a bad size is a usage error before the store is opened
        limit = None if args.size is None else parse_size(args.size)
    except InvalidInput as exc:
        _error(str(exc))
        return EXIT_USAGE

    async def action(store: Store) -> int:
        accounts = _accounts(store)
        if args.size is None:
            _out(_quota_line(await accounts.summary(args.address)))
            return EXIT_OK
        summary = await accounts.set_quota(args.address, limit)
        _out(f"set the quota of {summary.address} to {_limit_text(limit)}"
             + ("" if limit is None else f" ({limit} octets)"))
        _out(_quota_line(summary))
        if summary.limit is not None and summary.used >= summary.limit:
            _out("  the account is full: new mail is refused until it uses less")
        return EXIT_OK

    return _with_store(config, action)


def _limit_text(limit: int | None) -> str:
    return "none" if limit is None else format_size(limit)


def _quota_line(summary: UserSummary) -> str:
    line = f"{summary.address}: {format_size(summary.used)} used"
    if summary.limit is None:
        return line + ", no quota"
    share = 100 * summary.used / summary.limit if summary.limit else 100.0
    return line + f" of {format_size(summary.limit)} ({share:.0f}%)"


# --- aliases ----------------------------------------------------------------------------------

def _alias_add(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        alias, targets = await _accounts(store).add_alias(args.alias, args.targets)
        _out(f"alias {alias} -> {', '.join(targets)}")
        return EXIT_OK

    return _with_store(config, action)


def _alias_remove(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        removal = await _accounts(store).remove_alias(args.alias)
        _out(f"removed alias {removal.key}")
        _report_alias_changes(removal)
        return EXIT_OK

    return _with_store(config, action)


def _alias_list(args: argparse.Namespace, config: Config) -> int:
    async def action(store: Store) -> int:
        rows = [(alias, ", ".join(targets))
                for alias, targets in await _accounts(store).list_aliases()]
        _table(("ALIAS", "TARGETS"), rows)
        return EXIT_OK

    return _with_store(config, action)


def _report_alias_changes(removal: Removal) -> None:
    for alias in removal.aliases_changed:
        _out(f"  removed {removal.key} from the targets of alias {alias}")
    for alias in removal.aliases_removed:
        _out(f"  removed alias {alias}, which had no target left")


# --- export / import --------------------------------------------------------------------------

def _export(args: argparse.Namespace, config: Config) -> int:
    if cli_transfer.splits(config):  # root: files as root, the store as the service user
        return cli_transfer.export_as_root(lambda action: _store_outcome(config, action),
                                           args.address, args.maildir, config.hostname)

    async def action(store: Store) -> int:
        account = await cli_transfer.account_of(store, args.address)
        report = await export_maildir(store, account, args.maildir, hostname=config.hostname)
        return cli_transfer.transfer_result("exported", report, f"to {args.maildir}")

    return _with_store(config, action)


def _import(args: argparse.Namespace, config: Config) -> int:
    if args.maildir is not None and args.mailbox is not None:
        _error("--mailbox goes with --mbox; a maildir's folders keep their names")
        return EXIT_USAGE
    if cli_transfer.splits(config):  # root: files as root, the store as the service user
        return cli_transfer.import_as_root(lambda action: _store_outcome(config, action),
                                           args.address, maildir=args.maildir, mbox=args.mbox,
                                           mailbox=args.mailbox or INBOX)

    async def action(store: Store) -> int:
        account = await cli_transfer.account_of(store, args.address)
        if args.maildir is not None:
            report = await import_maildir(store, account, args.maildir)
            source = args.maildir
        else:
            report = await import_mbox(store, account, args.mbox,
                                       mailbox=args.mailbox or INBOX)
            source = args.mbox
        return cli_transfer.transfer_result("imported", report,
                                            f"from {source} into {account.address}")

    return _with_store(config, action)


# --- output -----------------------------------------------------------------------------------







if __name__ == "__main__":
    sys.exit(main())
