"""MTA-STS (RFC 8461): the policy this server publishes for each domain it hosts, so sending
servers insist on TLS with a valid certificate for our MX instead of accepting a stripped
STARTTLS. The policy lives at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (§3.3), served
by the public web listener, and a TXT record `_mta-sts.DOMAIN` announces it with an id that
must change whenever the policy does (§3.1). The id is derived from the policy's text, so it
changes exactly then, without state to keep.
"""

from __future__ import annotations

import hashlib
from typing import Final

from mailhouse.config import Config

WELL_KNOWN: Final = "/.well-known/mta-sts.txt"
HOST_PREFIX: Final = "mta-sts."
CONTENT_TYPE: Final = "text/plain"  # §3.2: the policy's media type
ID_LENGTH: Final = 20  # §3.1: id is 1 to 32 letters and digits


def policy(config: Config) -> bytes:
    """The policy text (§3.2): key/value lines ending in CRLF. One `mx` line, the server's
    hostname, which is what every hosted domain's MX names (`dns-records`)."""
    lines = ["version: STSv1", f"mode: {config.mta_sts.mode}", f"mx: {config.hostname}",
             f"max_age: {config.mta_sts.max_age}"]
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def policy_id(config: Config) -> str | None:
    """The TXT record's id for the policy served now, or None when no policy is served (no
    web listener: publishing the record then would point senders at nothing)."""
    if not config.web.listen:
        return None
    return hashlib.sha256(policy(config)).hexdigest()[:ID_LENGTH]


def policy_domain(host: str, path: str, hosted: frozenset[str]) -> str | None:
    """The hosted domain a request for the policy names (`mta-sts.DOMAIN`, any port), or None
    when the request is not for a policy of ours."""
    if path != WELL_KNOWN:
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip().rstrip(".").lower()
    if not name.startswith(HOST_PREFIX):
        return None
    domain = name[len(HOST_PREFIX):]
    return domain if domain in hosted else None
