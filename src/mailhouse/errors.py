"""Errors that carry their wire reply.

An error knows what the client should be told and whether trying again can help. Anything not
classified is temporary (4xx): the sender keeps the message and retries, so nothing is lost.
Reply text never names configuration, paths or internals.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: basic code, RFC 3463 enhanced code, text (may hold several lines)."""

    code: int
    enhanced: str | None
    text: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self, *, enhanced: bool = True) -> bytes:
        """Serialize, multi-line when the text has newlines (RFC 5321 §4.2.1)."""
        lines = self.text.split("\n") or [""]
        prefix = f"{self.enhanced} " if (enhanced and self.enhanced) else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")


class MailError(Exception):
    """A failure with a reply for the client. Unclassified means temporary."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply or Reply(451, "4.3.0", "Temporary local problem, try again later")
        super().__init__(self.reply.text)

    @property
    def temporary(self) -> bool:
        return not self.reply.permanent


class StorageFull(MailError):
    """The disk or a quota is full: 452 4.3.1 (RFC 3463), never a 250."""

    def __init__(self) -> None:
        super().__init__(Reply(452, "4.3.1", "Insufficient system storage"))


class ConfigError(Exception):
    """An operator mistake in configuration; the message names the key and how to fix it."""
