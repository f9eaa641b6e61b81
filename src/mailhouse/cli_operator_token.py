"""`mailhouse operator token add NAME --scope S... [--label L] [--expires DAYS]`,
`operator token list [NAME]`, `operator token revoke ID`: operators' tokens for the admin API
(service/api_tokens.py). The token is printed once, on stdout alone, so
`TOKEN=$(mailhouse operator token add ann --scope read)` captures it; it cannot be shown again.
Changes are audited with actor `cli:<the Unix user who ran it>`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from mailhouse import cli_common
from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error, out, table
from mailhouse.cli_queue import run_with_store
from mailhouse.config import Config
from mailhouse.service.accounts import AccountError, InvalidInput
from mailhouse.service.api_tokens import SCOPES, ApiTokens
from mailhouse.store.base import Store

S = TypeVar("S")


def register(operator_actions: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add `token` under `operator`'s actions."""
    token = operator_actions.add_parser("token", parents=list(parents),
                                        help="operators' tokens for the admin API")
    actions = token.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    p = actions.add_parser("add", parents=list(parents),
                           help="make a token (printed once) for operator NAME")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--scope", action="append", required=True, choices=list(SCOPES),
                   help="what the token may do (repeatable): " + "; ".join(
                       f"{k}: {v}" for k, v in SCOPES.items()))
    p.add_argument("--label", default="", help="what the token is for (shown in lists)")
    p.add_argument("--expires", type=int, metavar="DAYS", help="expire after DAYS days")
    p.set_defaults(handler=_add)
    p = actions.add_parser("list", parents=list(parents), help="tokens (never their secrets)")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this operator's")
    p.set_defaults(handler=_list)
    p = actions.add_parser("revoke", parents=list(parents), help="revoke token ID")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(handler=_revoke)


def run_service(config: Config, build: Callable[[Store], S],
                work: Callable[[S], Awaitable[None]]) -> int:
    """Open the store, run `work` on the service `build` makes over it, and map the service's
    refusals to the CLI's exit codes: invalid input is a usage error (2), the rest 1."""
    async def action(store: Store) -> int:
        try:
            await work(build(store))
        except InvalidInput as exc:
            error(str(exc))
            return EXIT_USAGE
        except AccountError as exc:
            error(str(exc))
            return EXIT_FAILED
        return EXIT_OK

    return run_with_store(config, action)


def _run(config: Config, work: Callable[[ApiTokens], Awaitable[None]]) -> int:
    return run_service(config, ApiTokens, work)


def _add(args: argparse.Namespace, config: Config) -> int:
    who = cli_common.actor()

    async def work(tokens: ApiTokens) -> None:
        new = await tokens.create(args.name, args.scope, actor=who, label=args.label,
                                  days=args.expires)
        out(new.secret)
        error(f"token {new.token.id} for operator {args.name} ({' '.join(new.token.scopes)}): "
              "keep it now, it is not shown again")

    return _run(config, work)


def _list(args: argparse.Namespace, config: Config) -> int:
    async def work(tokens: ApiTokens) -> None:
        now = time.time()
        rows = [(str(t.id), t.admin, " ".join(t.scopes), t.label, _when(t.created),
                 _when(t.expires) + (" (expired)" if t.expires and t.expires <= now else ""),
                 _when(t.last_used)) for t in await tokens.list(args.name)]
        if rows:
            table(("ID", "OPERATOR", "SCOPES", "LABEL", "MADE", "EXPIRES", "LAST USED"), rows)
        else:
            out("no tokens: mailhouse operator token add NAME --scope read")

    return _run(config, work)


def _revoke(args: argparse.Namespace, config: Config) -> int:
    who = cli_common.actor()

    async def work(tokens: ApiTokens) -> None:
        token = await tokens.revoke(args.id, actor=who)
        out(f"revoked token {token.id} of operator {token.admin}")

    return _run(config, work)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
