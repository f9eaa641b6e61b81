"""What the IMAP service announces and the limits of its commands."""

from __future__ import annotations

from dataclasses import dataclass

# What the service implements, announced after login (proto/imap/server.py adds IMAP4rev1,
# IMAP4rev2, the AUTH= and core atoms). Only what works end to end belongs here.
CAPABILITIES: tuple[str, ...] = (
    "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE",
    "LIST-EXTENDED", "LIST-STATUS", "ESEARCH", "SEARCHRES", "STATUS=SIZE", "MULTIAPPEND",
    "BINARY", "CONDSTORE", "QRESYNC", "QUOTA", "QUOTA=RES-STORAGE", "SORT", "SORT=DISPLAY",
    "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "ESORT", "CONTEXT=SEARCH", "CONTEXT=SORT",
    "UTF8=ACCEPT",
)
# UTF8=ONLY (RFC 6855 §6) is not announced: sessions that do not enable UTF-8 keep modified
# UTF-7 names.
ENABLEABLE: tuple[str, ...] = ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT")


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """Limits of the mailbox commands (docs/operations.md, [imap])."""

    append_limit: int = 50 * 1024 * 1024  # APPENDLIMIT (RFC 7889), octets per message
    fetch_batch: int = 500  # messages read from the store per round of a FETCH / SEARCH
    search_content_limit: int = 100_000  # messages a body/text SEARCH may decode
    max_search_updates: int = 16  # live SEARCH/SORT results (RFC 5267 UPDATE) per session


def capabilities(settings: ImapSettings) -> tuple[str, ...]:
    """CAPABILITIES with the limits that depend on the configuration (RFC 7889 APPENDLIMIT)."""
    return (*CAPABILITIES, f"APPENDLIMIT={settings.append_limit}")
