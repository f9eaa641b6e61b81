"""What the two sides of a mail transfer exchange (service/mailfiles.py): records of
mailboxes, messages and problems, the report, and the errors that stop a transfer. Plain data,
so cli_transfer.py can carry them between processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from mailhouse.service.maildir_names import CHUNK, INBOX

# Message bytes travel in records of at most this many octets (and are read in such chunks).
MAX_DATA_RECORD: Final = CHUNK


class MailFileError(Exception):
    """An import or export that cannot start (bad path, not a maildir …); the message says why."""


@dataclass(slots=True)
class TransferReport:
    """What an import or export did; `problems` lists each thing skipped and why."""

    mailboxes: int = 0
    messages: int = 0
    problems: list[str] = field(default_factory=list)


# --- records: what the two sides exchange ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExportMailbox:
    """Export: the following messages belong to mailbox `name`; `keywords` are all the
    keywords its messages carry (sorted), so the file side can assign the letters up front."""

    name: str
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExportMessage:
    """Export: a message begins; its content follows as Data records, then MessageEnd."""

    flags: tuple[str, ...]
    internal_date: float
    wire_size: int


@dataclass(frozen=True, slots=True)
class Data:
    """Message content, at most MAX_DATA_RECORD octets: CRLF (store form) in either
    direction."""

    chunk: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """Export: the current message is complete."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Import: something the file side skipped, for the report."""

    text: str


@dataclass(frozen=True, slots=True)
class Folder:
    """Import: the following messages go into `mailbox` (which exists)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class ImportMessage:
    """Import: a message begins; `what` names it in problems ("FILE", "FILE message 3")."""

    what: str


@dataclass(frozen=True, slots=True)
class ImportEnd:
    """Import: the current message is complete. mbox flags and dates are only known at its
    end (Status headers, the Date header); `if_empty` is the problem text for no content."""

    flags: tuple[str, ...]
    internal_date: float | None
    if_empty: str


ExportRecord = ExportMailbox | ExportMessage | Data | MessageEnd
ImportRecord = Problem | Folder | ImportMessage | Data | ImportEnd


def canonical_mailbox(name: str) -> str:
    return INBOX if name.upper() == INBOX else name  # RFC 9051 §5.1: only INBOX ignores case


def missing_mailbox(mailbox: str) -> str:
    # The Store interface cannot create mailboxes yet (IMAP CREATE will bring that); checking
    # up front gives one clear line per folder instead of one failure per message.
    return (f"mailbox {mailbox!r} does not exist and cannot be created from the command line "
            "yet; its messages were not imported")
