"""Who may log in and whom we receive mail for: passwords, domains, users, aliases, quotas.

Both the CLI and the protocol services come through here rather than calling the Store
directly, so every address is put into its one canonical key form (model.Address.key:
case-folded local part, lower-case A-label domain) in one place, and the directory stays
consistent: a user or alias always belongs to one of our domains, an alias only points at local
users or aliases, and no alias chain loops.

Passwords are argon2id (RFC 9106) through argon2-cffi, with OWASP's minimum parameters
(m = 19 MiB, t = 2, p = 1): about 30-40 ms per check on one core here. A mail server checks a
password on every IMAP/POP3/submission connection, and clients reconnect often, so we trade the
RFC 9106 64 MiB profile (~110 ms, 64 MiB per concurrent login) for throughput and a bounded
memory peak under a login flood; the auth throttle bounds guessing. Stored hashes carry their own
parameters, so raising these later only means users are rehashed at their next login.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from mailhouse.model import Account, Address, AddressError, Directory, normalize_domain
from mailhouse.store.base import Store

log = logging.getLogger(__name__)

ARGON2_TIME_COST: Final = 2
ARGON2_MEMORY_COST_KIB: Final = 19_456  # 19 MiB
ARGON2_PARALLELISM: Final = 1
ARGON2_HASH_LEN: Final = 32
ARGON2_SALT_LEN: Final = 16
# Longer "passwords" are refused before hashing: no client needs them, and they bound the work
# an unauthenticated peer can ask for.
MAX_PASSWORD_BYTES: Final = 1024
VERIFIED_CACHE_TTL: Final = 900.0  # seconds a successful login is remembered (0: never)
VERIFIED_CACHE_MAX: Final = 10_000  # entries; bounded memory
# Quota sizes as the operator writes them: a number of octets with an optional K, M, G or T
# suffix, 1024-based (as Dovecot's quota_rule and Postfix's mailbox_size_limit read by people).
SIZE_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_QUOTA: Final = (1 << 63) - 1  # the largest SQLite INTEGER: accounts.quota must hold it
_SIZE: Final = re.compile(r"(\d{1,19})([KMGT]?)", re.IGNORECASE)
# NUL separates SASL PLAIN fields (RFC 4616) and CR/LF end protocol lines: a password holding
# them could never be typed in by a mail client.
_FORBIDDEN_IN_PASSWORD: Final = "\0\r\n"


def default_hasher() -> PasswordHasher:
    return PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_COST_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=ARGON2_HASH_LEN,
        salt_len=ARGON2_SALT_LEN,
        type=Type.ID,
    )


# --- errors -----------------------------------------------------------------------------------

class AccountError(Exception):
    """An administration request that cannot be carried out; the message says how to fix it."""


class InvalidInput(AccountError):
    """The request is malformed (not an address, empty password …): a usage error."""


class AlreadyExists(AccountError):
    pass


class NotFound(AccountError):
    pass


# --- passwords --------------------------------------------------------------------------------

def check_password(password: str) -> str:
    """The password as it will be hashed, or InvalidInput.

    NFC normalization (as RFC 8265's OpaqueString profile does) makes the same password typed
    on two keyboards, precomposed or not, the same password."""
    if not password:
        raise InvalidInput("the password is empty")
    if any(c in password for c in _FORBIDDEN_IN_PASSWORD):
        raise InvalidInput("the password contains a NUL, CR or LF character")
    normalized = unicodedata.normalize("NFC", password)
    if len(normalized.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise InvalidInput(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return normalized


class Passwords:
    """Hashing policy: argon2id hashes, verification, and whether a hash is outdated.

    Tests pass a cheap PasswordHasher; production uses `default_hasher()`."""

    def __init__(self, hasher: PasswordHasher | None = None, *,
                 cache_ttl: float = VERIFIED_CACHE_TTL) -> None:
        self._hasher = hasher or default_hasher()
        self._dummy: str | None = None
        # Logins verified recently, as Dovecot's auth_cache: mail clients log in on every
        # connection, and argon2 is deliberately expensive. Keyed by an HMAC (per-process secret)
        # of the stored hash and the password, so a changed password (a new hash) misses, and
        # nothing here reveals a password. Only successes are cached: every failure pays the
        # full cost, so timing never tells an unknown user from a wrong password.
        self._cache_ttl = cache_ttl
        self._cache_secret = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}

    def _cache_key(self, stored_hash: str, password: str) -> bytes:
        return hmac.digest(self._cache_secret,
                           stored_hash.encode() + b"\0" + password.encode("utf-8", "replace"),
                           "sha256")

    def recently_verified(self, stored_hash: str | None, password: str) -> bool:
        """True when this exact (hash, password) pair passed `verify` within the cache TTL."""
        if stored_hash is None or self._cache_ttl <= 0:
            return False
        expires = self._verified.get(self._cache_key(stored_hash, password))
        return expires is not None and expires > time.monotonic()

    def _remember(self, stored_hash: str, password: str) -> None:
        if self._cache_ttl <= 0:
            return
        now = time.monotonic()
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified = {k: t for k, t in self._verified.items() if t > now}
            if len(self._verified) >= VERIFIED_CACHE_MAX:
                self._verified.clear()
        self._verified[self._cache_key(stored_hash, password)] = now + self._cache_ttl

    def hash(self, password: str) -> str:
        return self._hasher.hash(check_password(password))

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches `stored_hash`. With None (unknown user) a dummy hash of
        the same parameters is checked, so an unknown user and a wrong password cost the same
        time and cannot be told apart (security.md check 11)."""
        target = stored_hash if stored_hash is not None else self._dummy_hash()
        try:
            candidate = check_password(password)
        except InvalidInput:
            candidate = "\0"  # never matches, yet costs the same work
        matched: bool
        try:
            matched = self._hasher.verify(target, candidate)
        except VerificationError:
            matched = False
        except InvalidHashError:
            log.warning("password_hash_unreadable")
            matched = False
        if matched and stored_hash is not None:
            self._remember(stored_hash, password)
            return True
        return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy


# --- canonical forms --------------------------------------------------------------------------

def canonical_domain(text: str) -> str:
    """A domain we may host, in canonical form (lower-case A-labels)."""
    try:
        name = normalize_domain(text)
    except AddressError as exc:
        raise InvalidInput(f"{text!r} is not a valid domain name ({exc})") from None
    if name.startswith("["):
        raise InvalidInput(f"{text!r}: an address literal cannot be a mail domain")
    return name


def canonical_address(text: str) -> str:
    """A local user's or alias's address as its lookup key (model.Address.key).

    Quoted local parts are refused: they are legal on the wire (RFC 5321 §4.1.2) but as login
    names they invite confusion (spaces, backslashes) for no gain."""
    try:
        address = Address.parse(text.strip())
    except AddressError as exc:
        raise InvalidInput(f"{text!r} is not a valid address ({exc})") from None
    if address.local.startswith('"'):
        raise InvalidInput(f"{text!r}: quoted local parts are not supported for local users")
    return address.key


def parse_size(text: str) -> int | None:
    """A quota limit in octets from "500", "100M", "2g" (1024-based), or None for "none"."""
    text = text.strip()
    if text.lower() == "none":
        return None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidInput(f"{text!r} is not a size: a number of octets with an optional K, M, "
                           "G or T suffix (1024-based), or none")
    octets = int(match[1]) * SIZE_UNITS[match[2].upper()]
    if octets > MAX_QUOTA:
        raise InvalidInput(f"{text!r} is larger than the largest quota ({MAX_QUOTA} octets)")
    return octets


def format_size(octets: int) -> str:
    """The reverse of parse_size for people: exact when a unit divides it ("100M"), else one
    decimal ("1.5K")."""
    for unit in ("T", "G", "M", "K"):
        factor = SIZE_UNITS[unit]
        if octets >= factor:
            if octets % factor == 0:
                return f"{octets // factor}{unit}"
            return f"{octets / factor:.1f}{unit}"
    return str(octets)


def canonical_alias(text: str) -> str:
    """An alias key: an address, or "@domain" for a catch-all."""
    text = text.strip()
    if text.startswith("@"):
        return "@" + canonical_domain(text[1:])
    return canonical_address(text)


def _domain_of(key: str) -> str:
    return key.rpartition("@")[2]


# --- the service ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DomainSummary:
    name: str
    users: int
    aliases: int


@dataclass(frozen=True, slots=True)
class UserSummary:
    """One line of `mailhouse user list`; `used` and `limit` in octets (limit None: none)."""

    address: str
    mailboxes: int
    messages: int
    used: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class Removal:
    """What a removal did: the key removed and the aliases it had to change or drop, so the
    operator sees every side effect."""

    key: str
    aliases_changed: tuple[str, ...] = ()
    aliases_removed: tuple[str, ...] = ()


class Accounts:
    """Domain, user and alias administration and login checks on top of a Store."""

    def __init__(self, store: Store, passwords: Passwords | None = None, *,
                 actor: str | None = None, clock: Callable[[], float] = time.time) -> None:
        """`actor`: who makes the changes (`cli:root`, later `operator:ann`); each change is
        then written to the audit log. None: no log (the server's own login checks)."""
        self._store = store
        self._passwords = passwords or Passwords()
        self._actor = actor
        self._clock = clock

    async def _audit(self, action: str, detail: str) -> None:
        if self._actor is not None:
            await self._store.audit(self._actor, action, detail, self._clock())

    # --- domains ------------------------------------------------------------------------------
    async def add_domain(self, name: str) -> str:
        """Idempotent: adding a domain we already host is not an error."""
        domain = canonical_domain(name)
        await self._store.add_domain(domain)
        await self._audit("domain.add", domain)
        return domain

    async def remove_domain(self, name: str) -> str:
        """Refuses while users or aliases live in the domain: removing it would silently start
        bouncing their mail and orphan their mailboxes."""
        domain = canonical_domain(name)
        directory = await self._store.directory()
        if domain not in directory.domains:
            raise NotFound(f"{domain} is not one of our domains")
        users = [k for k in directory.users if _domain_of(k) == domain]
        aliases = [k for k in directory.aliases if _domain_of(k) == domain]
        if users or aliases:
            raise AccountError(
                f"{domain} still has {_count(len(users), 'user')} and "
                f"{_count(len(aliases), 'alias')}: remove them first (see `mailhouse user list` "
                "and `mailhouse alias list`)")
        await self._store.remove_domain(domain)
        await self._audit("domain.remove", domain)
        return domain

    async def list_domains(self) -> list[DomainSummary]:
        directory = await self._store.directory()
        return [
            DomainSummary(
                name,
                sum(1 for k in directory.users if _domain_of(k) == name),
                sum(1 for k in directory.aliases if _domain_of(k) == name),
            )
            for name in sorted(directory.domains)
        ]

    # --- users --------------------------------------------------------------------------------
    async def add_user(self, address: str, password: str) -> Account:
        key = canonical_address(address)
        password = check_password(password)
        directory = await self._store.directory()
        self._require_our_domain(directory, key)
        if key in directory.aliases:
            raise AlreadyExists(
                f"{key} is an alias; remove it first with `mailhouse alias remove {key}`")
        if key in directory.users:
            raise AlreadyExists(f"user {key} already exists")
        password_hash = await asyncio.to_thread(self._passwords.hash, password)
        try:
            account = await self._store.add_account(key, password_hash)
        except KeyError:
            raise AlreadyExists(f"user {key} already exists") from None
        await self._audit("user.add", key)
        return account

    async def set_password(self, address: str, password: str) -> str:
        key = canonical_address(address)
        password = check_password(password)
        password_hash = await asyncio.to_thread(self._passwords.hash, password)
        if not await self._store.set_password(key, password_hash):
            raise NotFound(f"no user {key}")
        await self._audit("user.password", key)
        return key

    async def remove_user(self, address: str) -> Removal:
        """Removes the account with all its mail, and takes it out of every alias that named it
        (dropping aliases left with no target) so nothing routes to a user who is gone."""
        key = canonical_address(address)
        if not await self._store.remove_account(key):
            raise NotFound(f"no user {key}")
        await self._audit("user.remove", key)
        changed, removed = await self._drop_references(key)
        return Removal(key, changed, removed)

    async def list_users(self) -> list[Account]:
        return sorted(await self._store.list_accounts(), key=lambda a: a.address)

    async def summaries(self) -> list[UserSummary]:
        out = []
        for account in await self.list_users():
            mailboxes = await self._store.list_mailboxes(account.id)
            quota = await self._store.get_quota(account.id)
            out.append(UserSummary(
                account.address, len(mailboxes), sum(m.message_count for m in mailboxes),
                quota.used if quota else sum(m.size for m in mailboxes),
                quota.limit if quota else None))
        return out

    # --- quota --------------------------------------------------------------------------------
    async def set_quota(self, address: str, limit: int | None) -> UserSummary:
        """Set (or with None remove) the account's storage limit in octets. Nothing is removed
        when the usage is already above it: new mail is refused (SMTP 452 4.2.2, IMAP
        [OVERQUOTA]) until the user frees space. Running servers notice within a moment (the
        directory serial changes)."""
        key = canonical_address(address)
        if limit is not None and not 0 <= limit <= MAX_QUOTA:
            raise InvalidInput(f"a quota is 0 to {MAX_QUOTA} octets, not {limit}")
        if not await self._store.set_quota(key, limit):
            raise NotFound(f"no user {key}")
        await self._audit("user.quota", f"{key} {'none' if limit is None else limit}")
        return await self.summary(key)

    async def summary(self, address: str) -> UserSummary:
        key = canonical_address(address)
        account = await self._store.get_account(key)
        quota = await self._store.get_quota(account.id) if account is not None else None
        if account is None or quota is None:
            raise NotFound(f"no user {key}")
        mailboxes = await self._store.list_mailboxes(account.id)
        return UserSummary(key, len(mailboxes), sum(m.message_count for m in mailboxes),
                           quota.used, quota.limit)

    # --- aliases ------------------------------------------------------------------------------
    async def add_alias(self, alias: str, targets: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        """Create the alias or add targets to an existing one; returns its full target list.

        Targets must be local users or aliases: forwarding to other domains needs outbound
        delivery (a later issue), and a target that exists nowhere would bounce every message.
        """
        key = canonical_alias(alias)
        if not targets:
            raise InvalidInput("an alias needs at least one target address")
        directory = await self._store.directory()
        self._require_our_domain(directory, key)
        if key in directory.users:
            raise AlreadyExists(f"{key} is a user; an address cannot be both user and alias")
        new_targets = [self._check_target(directory, key, t) for t in targets]
        merged = tuple(dict.fromkeys((*directory.aliases.get(key, ()), *new_targets)))
        graph = dict(directory.aliases)
        graph[key] = merged
        loop = _find_loop(graph, key)
        if loop:
            raise AccountError(f"that would make a loop: {' → '.join(loop)}")
        await self._store.set_alias(key, merged)
        await self._audit("alias.set", f"{key} -> {' '.join(merged)}")
        return key, merged

    async def remove_alias(self, alias: str) -> Removal:
        """Like remove_user, also takes the alias out of aliases that pointed at it."""
        key = canonical_alias(alias)
        if not await self._store.remove_alias(key):
            raise NotFound(f"no alias {key}")
        await self._audit("alias.remove", key)
        changed, removed = await self._drop_references(key)
        return Removal(key, changed, removed)

    async def list_aliases(self) -> list[tuple[str, tuple[str, ...]]]:
        return sorted((await self._store.list_aliases()).items())

    # --- login --------------------------------------------------------------------------------
    async def authenticate(self, username: str, password: str) -> Account | None:
        """The account when `password` is right, else None, taking the same time whether the
        user exists or not. Rehashes outdated hashes on success (the only moment we know the
        password). Hashing runs in a thread: argon2 releases the GIL, the loop keeps serving."""
        try:
            key: str | None = canonical_address(username)
        except InvalidInput:
            key = None
        account = await self._store.get_account(key) if key is not None else None
        stored = account.password_hash if account is not None else None
        if not (self._passwords.recently_verified(stored, password)
                or await asyncio.to_thread(self._passwords.verify, stored, password)):
            return None
        assert account is not None  # verify() is False without a stored hash
        if self._passwords.needs_rehash(account.password_hash):
            await self._rehash(account, password)
        return account

    async def _rehash(self, account: Account, password: str) -> None:
        try:
            new_hash = await asyncio.to_thread(self._passwords.hash, password)
            await self._store.set_password(account.address, new_hash)
        except Exception:  # best effort: a failed upgrade must never fail a correct login
            log.warning("password_rehash_failed account=%s", account.address, exc_info=True)

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _require_our_domain(directory: Directory, key: str) -> None:
        domain = _domain_of(key)
        if domain not in directory.domains:
            raise AccountError(
                f"{domain} is not one of our domains; add it first with "
                f"`mailhouse domain add {domain}`")

    @staticmethod
    def _check_target(directory: Directory, alias: str, text: str) -> str:
        if text.strip().startswith("@"):
            raise InvalidInput(f"{text!r}: an alias target must be an address, not a domain")
        target = canonical_address(text)
        if target == alias:
            raise AccountError(f"that would make a loop: {alias} → {alias}")
        if _domain_of(target) not in directory.domains:
            raise AccountError(
                f"{target}: forwarding to other domains is not supported yet (it comes with "
                "outbound delivery); alias targets must be users or aliases in our domains")
        if target not in directory.users and target not in directory.aliases:
            raise NotFound(
                f"{target} is neither a user nor an alias; add it first with "
                f"`mailhouse user add {target}`")
        return target

    async def _drop_references(self, key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Remove `key` from every alias's targets; an alias left empty is removed too, and in
        turn from the aliases naming it."""
        aliases = dict(await self._store.list_aliases())
        changed: dict[str, None] = {}
        removed: list[str] = []
        gone = [key]
        while gone:
            target = gone.pop()
            for alias, targets in list(aliases.items()):
                if target not in targets:
                    continue
                rest = tuple(t for t in targets if t != target)
                if rest:
                    aliases[alias] = rest
                    await self._store.set_alias(alias, rest)
                    changed[alias] = None
                else:
                    del aliases[alias]
                    await self._store.remove_alias(alias)
                    changed.pop(alias, None)
                    removed.append(alias)
                    gone.append(alias)
        return tuple(changed), tuple(removed)


def _find_loop(graph: dict[str, tuple[str, ...]], start: str) -> list[str] | None:
    """A path start → … → start through alias targets, if one exists (depth-first)."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for target in graph.get(node, ()):
            if target == start:
                return [*path, target]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n} {noun if n == 1 else plural}"

