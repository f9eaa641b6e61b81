"""Where a recipient address leads: our accounts, nowhere, or not ours at all.

Pure and in-memory: it reads a `Directory` snapshot, so every RCPT is answered without I/O.
Resolution order for `local@domain` in one of our domains:
exact account → exact alias → plus-address base (`alice+tag` → `alice`) → catch-all `@domain`
→ for `postmaster`, the domain's first account (RFC 5321 §4.5.1 requires postmaster to work).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mailhouse.model import Address, Directory

MAX_ALIAS_DEPTH = 10  # an alias chain longer than this is a configuration loop


class Route(Enum):
    LOCAL = "local"
    UNKNOWN_USER = "unknown"  # our domain, nobody by that name: 550 5.1.1
    NOT_OURS = "not_ours"  # another domain: relaying, 554 5.7.1 on the MX port


@dataclass(frozen=True, slots=True)
class Resolution:
    route: Route
    account_ids: tuple[int, ...] = ()


def _expand(directory: Directory, key: str, depth: int, out: list[int]) -> bool:
    """Add the accounts `key` reaches to `out`; False if it reaches nobody."""
    account = directory.users.get(key)
    if account is not None:
        if account not in out:
            out.append(account)
        return True
    targets = directory.aliases.get(key)
    if targets is None or depth >= MAX_ALIAS_DEPTH:
        return False
    found = False
    for target in targets:
        found = _expand(directory, target, depth + 1, out) or found
    return found


def resolve(directory: Directory, address: Address, plus_separator: str = "+") -> Resolution:
    if address.domain not in directory.domains:
        return Resolution(Route.NOT_OURS)
    out: list[int] = []
    key = address.key
    local = key.rsplit("@", 1)[0]
    if _expand(directory, key, 0, out):
        return Resolution(Route.LOCAL, tuple(out))
    if plus_separator and plus_separator in local:
        base = local.split(plus_separator, 1)[0]
        if base and _expand(directory, f"{base}@{address.domain}", 0, out):
            return Resolution(Route.LOCAL, tuple(out))
    if _expand(directory, f"@{address.domain}", 0, out):
        return Resolution(Route.LOCAL, tuple(out))
    if local == "postmaster":
        first = _first_account(directory, address.domain)
        if first is not None:
            return Resolution(Route.LOCAL, (first,))
    return Resolution(Route.UNKNOWN_USER)


def resolve_postmaster(directory: Directory) -> Resolution:
    """A bare `RCPT TO:<Postmaster>` (RFC 5321 §4.1.1.3): the postmaster of our first domain."""
    for domain in sorted(directory.domains):
        found = resolve(directory, Address("postmaster", domain))
        if found.route is Route.LOCAL:
            return found
    return Resolution(Route.UNKNOWN_USER)


def resolve_rcpt(directory: Directory, recipient: Address | None,
                 plus_separator: str = "+") -> tuple[Address, Resolution]:
    """An RCPT TO's recipient and where it goes; `None` is the bare <Postmaster> (named then
    as the postmaster of our first domain)."""
    if recipient is None:
        return (Address("postmaster", min(directory.domains, default="invalid")),
                resolve_postmaster(directory))
    return recipient, resolve(directory, recipient, plus_separator)


def _first_account(directory: Directory, domain: str) -> int | None:
    suffix = "@" + domain
    ids = [aid for key, aid in directory.users.items() if key.endswith(suffix)]
    return min(ids) if ids else None
