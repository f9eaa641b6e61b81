"""`mailhouse operator add|passwd NAME`, `operator remove NAME`, `operator list`,
`operator audit [--limit N]`: the server's operators (service/operators.py) and the audit log
of their changes; `operator token …` is cli_operator_token.py. The actor of a change made here
is `cli:<the Unix user who ran it>`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Sequence

from mailhouse.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    actor,
    error,
    out,
    read_password,
    table,
)
from mailhouse.cli_operator_token import register as register_token
from mailhouse.cli_operator_token import run_service
from mailhouse.config import Config
from mailhouse.service.accounts import AccountError, InvalidInput
from mailhouse.service.operators import AUDIT_PAGE, Operators, check_operator_password
from mailhouse.store.rules import check_admin_name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    operator = subparsers.add_parser("operator", parents=list(parents),
                                     help="who may run the server (the admin API, later the "
                                          "web admin), and the audit log")
    actions = operator.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, text in (("add", _add, "add an operator"),
                                ("passwd", _passwd, "change an operator's password")):
        p = actions.add_parser(name, parents=list(parents), help=text)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
        p.set_defaults(handler=handler)
    p = actions.add_parser("remove", parents=list(parents), help="remove an operator")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=_remove)
    actions.add_parser("list", parents=list(parents), help="list operators").set_defaults(
        handler=_list)
    p = actions.add_parser("audit", parents=list(parents), help="the newest changes, newest first")
    p.add_argument("--limit", type=int, default=AUDIT_PAGE, metavar="N")
    p.set_defaults(handler=_audit)
    register_token(actions, parents=parents)


def _run(config: Config, work: Callable[[Operators], Awaitable[None]]) -> int:
    return run_service(config, Operators, work)


def _with_password(args: argparse.Namespace, config: Config,
                   then: Callable[[Operators, str, str], Awaitable[None]]) -> int:
    # The name is checked and the password read before the store opens (as `user add` does).
    who = actor()
    try:
        check_admin_name(args.name)
        password = read_password(args)
        check_operator_password(password)
    except (ValueError, InvalidInput) as exc:
        error(str(exc))
        return EXIT_USAGE
    except AccountError as exc:
        error(str(exc))
        return EXIT_FAILED
    return _run(config, lambda operators: then(operators, password, who))


def _add(args: argparse.Namespace, config: Config) -> int:
    async def then(operators: Operators, password: str, who: str) -> None:
        await operators.add(args.name, password, who)
        out(f"added operator {args.name}")

    return _with_password(args, config, then)


def _passwd(args: argparse.Namespace, config: Config) -> int:
    async def then(operators: Operators, password: str, who: str) -> None:
        await operators.set_password(args.name, password, who)
        out(f"changed the password of operator {args.name}")

    return _with_password(args, config, then)


def _remove(args: argparse.Namespace, config: Config) -> int:
    who = actor()

    async def work(operators: Operators) -> None:
        await operators.remove(args.name, who)
        out(f"removed operator {args.name}")

    return _run(config, work)


def _list(args: argparse.Namespace, config: Config) -> int:
    async def work(operators: Operators) -> None:
        rows = [(a.name, _when(a.created)) for a in await operators.list_all()]
        if rows:
            table(("NAME", "ADDED"), rows)
        else:
            out("no operators yet: mailhouse operator add NAME")

    return _run(config, work)


def _audit(args: argparse.Namespace, config: Config) -> int:
    async def work(operators: Operators) -> None:
        entries = await operators.audit_log(args.limit)
        table(("WHEN", "WHO", "WHAT", "DETAIL"),
              [(_when(e.at), e.actor, e.action, e.detail) for e in entries])

    return _run(config, work)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
