"""Storage quota as SMTP sees it (inbound MX and submission): refuse a full mailbox at RCPT,
and after DATA never drop one recipient while answering 250 for the others.

After DATA there is one reply for the whole transaction (RFC 5321 §4.1.1.4), so a store that
refused one target for quota and delivered another would make the 250 a lie for the first. The
rules (docs/decisions.md, "quota in SMTP"):
- RCPT: a local recipient reaching an account whose usage is at or over its limit, or would go
  over it with the size declared in MAIL FROM SIZE= (RFC 1870), gets 452 4.2.2 (RFC 3463
  "mailbox full"; RFC 5321 §4.5.3.1.10 allows 452 here) and is not added. An address reaching
  several accounts (an alias) is refused when any of them is full: the sender retries later
  rather than we skip one member silently or fill its mailbox without bound.
- After DATA: when every local target is over quota and nothing goes to the queue, 452 4.2.2
  and nothing is stored. Otherwise every target is delivered with `ignore_quota`: the few that
  the message takes over their limit (no SIZE= declared, or the mailbox filled since RCPT) get a
  grace of one message, as Dovecot's quota_grace, and the next message is refused at RCPT.

Only accounts that have a limit in the directory snapshot (`Directory.quotas`) cost a store read,
so mail to unlimited accounts is answered from memory as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from mailhouse.errors import Reply
from mailhouse.model import Directory
from mailhouse.store.base import DeliveryTarget, Store

MAILBOX_FULL: Final = Reply(452, "4.2.2", "Mailbox full")


def has_limit(directory: Directory, accounts: Iterable[int]) -> bool:
    """Whether any of these accounts has a quota: only then does RCPT need the store."""
    return any(account in directory.quotas for account in accounts)


async def over_quota(store: Store, directory: Directory, accounts: Sequence[int],
                     adding: int) -> list[int]:
    """The accounts (among those with a limit in `directory`) that are at or over their limit,
    or whose usage plus `adding` octets would be over it. The limit itself is read fresh from
    the store: the snapshot only says whom to ask."""
    full: list[int] = []
    for account in accounts:
        if account not in directory.quotas:
            continue
        quota = await store.get_quota(account)
        if quota is None or quota.limit is None:  # removed, or the limit lifted since
            continue
        if quota.used >= quota.limit or quota.used + adding > quota.limit:
            full.append(account)
    return full


def grace_targets(accounts: Iterable[int]) -> list[DeliveryTarget]:
    """The INBOX targets of a transaction SMTP has decided to accept: the store must not refuse
    one of them for quota once the others are stored."""
    return [DeliveryTarget(account, ignore_quota=True) for account in accounts]
