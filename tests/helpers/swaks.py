"""Running swaks (the Debian package) against a loopback SMTP server, plus wire formatting.

swaks 20201014 cannot add MAIL FROM parameters (no BODY=8BITMIME, no SMTPUTF8 option: its
``MAIL FROM:<addr>`` line only ever gets PRDR appended), so SMTPUTF8 and declared 8BITMIME are
sent with smtplib instead; swaks covers plain, STARTTLS, raw 8-bit bodies and big attachments.

With ``--no-data-fixup`` swaks sends a ``--data @file`` byte for byte, so `wire_data()` turns a
message into its DATA form (CRLF lines, dot-stuffed, ``.`` terminator) and a test can compare
what was stored with exactly what was sent.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.net import LOOPBACK
from tests.helpers.tools import program


@dataclass(frozen=True)
class SwaksResult:
    returncode: int
    transcript: str
    argv: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> SwaksResult:
        """Raise AssertionError with the transcript unless swaks exited 0."""
        if self.returncode != 0:
            raise AssertionError(
                f"swaks exited {self.returncode}: {' '.join(self.argv)}\n{self.transcript}"
            )
        return self


def swaks(
    port: int,
    *args: str,
    to: str,
    sender: str = "sender@remote.test",
    timeout: float = 120.0,
    helo: str = "client.remote.test",
) -> SwaksResult:
    """Run ``swaks --server 127.0.0.1:port --to TO --from SENDER ARGS...``.

    The transcript (stdout + stderr) is returned, never printed; call .check() to require
    success. swaks's own timeout is set to `timeout` too, so a stuck server fails the run.
    """
    argv = [
        program("swaks"),
        "--server",
        f"{LOOPBACK}:{port}",
        "--to",
        to,
        "--from",
        sender,
        "--helo",
        helo,
        "--timeout",
        f"{int(timeout)}s",
        *args,
    ]
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout + 30,
        check=False,
    )
    transcript = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    return SwaksResult(result.returncode, transcript, argv)


def crlf(text: bytes) -> bytes:
    """Normalise any line endings to CRLF."""
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire_data(message: bytes) -> bytes:
    """The DATA form of a CRLF message: dot-stuffed (RFC 5321 §4.5.2) with the terminator."""
    if not message.endswith(b"\r\n"):
        raise ValueError("message must end with CRLF")
    lines = message.split(b"\r\n")[:-1]
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(stuffed) + b"\r\n.\r\n"


def write_data_file(path: Path, message: bytes) -> Path:
    """Write `message` in DATA form for ``swaks --no-data-fixup --data @path``."""
    path.write_bytes(wire_data(message))
    return path
