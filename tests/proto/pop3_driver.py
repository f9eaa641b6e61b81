"""Drives the POP3 server core the way a transport would, over a scripted maildrop; no loop."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

from mailhouse.proto.pop3 import events as ev
from mailhouse.proto.pop3.server import LoginResult, MaildropEntry, Pop3Server, Pop3ServerConfig

GOOD = ("alice@example.test", "secret")


def default_login(event: ev.Credentials) -> LoginResult:
    return LoginResult.OK if (event.username, event.password) == GOOD else LoginResult.FAILED


@dataclass
class Driver:
    core: Pop3Server
    messages: list[bytes] = field(default_factory=list)  # the maildrop, as stored (CRLF)
    login: Callable[[ev.Credentials], LoginResult] = default_login
    chunk: int = 65536  # how the "store" streams a message
    commit_ok: bool = True
    unreadable: set[int] = field(default_factory=set)  # indexes the "store" fails to read
    events: list[ev.Event] = field(default_factory=list)
    credentials: list[ev.Credentials] = field(default_factory=list)
    commits: list[tuple[int, ...]] = field(default_factory=list)
    streamed: int = 0  # message octets handed to the core
    closed: bool = False
    tls_requested: bool = False
    auto_commit: bool = True  # answer Commit at once (False: the test answers)

    @classmethod
    def new(cls, messages: list[bytes] | None = None, *, tls: bool = True,
            login: Callable[[ev.Credentials], LoginResult] = default_login,
            **config: object) -> Driver:
        cfg = Pop3ServerConfig(hostname="pop.example.test", **config)  # type: ignore[arg-type]
        d = cls(Pop3Server(cfg, tls_active=tls), list(messages or []), login)
        greeting = d.core.data_to_send()
        assert greeting == b"+OK pop.example.test POP3 ready\r\n"
        return d

    def maildrop(self) -> list[MaildropEntry]:
        return [MaildropEntry(len(m), f"uid-{i + 1}") for i, m in enumerate(self.messages)]

    def feed(self, data: bytes) -> bytes:
        """Send bytes, run the core until it needs more, return everything it wrote."""
        self.core.receive_data(data)
        out: list[bytes] = []
        for _ in range(100_000):
            event = self.core.next_event()
            self.events.append(event)
            if isinstance(event, ev.NeedData):
                break
            if isinstance(event, ev.Closed):
                self.closed = True
                break
            self._handle(event, out)
        out.append(self.core.data_to_send())
        return b"".join(out)

    def _handle(self, event: ev.Event, out: list[bytes]) -> None:
        if isinstance(event, ev.Credentials):
            self.credentials.append(event)
            result = self.login(event)
            self.core.login_result(result, self.maildrop() if result is LoginResult.OK else ())
        elif isinstance(event, ev.Retrieve):
            if event.index in self.unreadable:
                self.core.message_failed()
                return
            data = self.messages[event.index]
            for start in range(0, len(data), self.chunk):
                self.streamed += len(data[start : start + self.chunk])
                more = self.core.message_data(data[start : start + self.chunk])
                # As the transport does: take the output after each chunk, never a whole message.
                out.append(self.core.data_to_send())
                if not more:
                    break
            self.core.message_end()
        elif isinstance(event, ev.Commit):
            self.commits.append(event.deleted)
            if self.auto_commit:
                self.core.commit_result(self.commit_ok)
        elif isinstance(event, ev.StartTls):
            self.tls_requested = True

    def start_tls(self) -> None:
        self.core.tls_established()

    def log_in(self) -> bytes:
        return self.feed(b"USER %s\r\nPASS %s\r\n" % (GOOD[0].encode(), GOOD[1].encode()))


def b64(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw)


def unstuff(response: bytes) -> bytes:
    """A multi-line response body as a client reads it (RFC 1939 §3): the first line is the
    status, the line "." ends it, a leading "." of any other line is dropped."""
    first, _, rest = response.partition(b"\r\n")
    assert first.startswith(b"+OK"), first
    lines = rest.split(b"\r\n")
    end = lines.index(b".")
    assert lines[end + 1 :] == [b""], "nothing may follow the terminator"
    body = [line[1:] if line.startswith(b".") else line for line in lines[:end]]
    return b"".join(line + b"\r\n" for line in body)
