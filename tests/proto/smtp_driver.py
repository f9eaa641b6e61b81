"""Drives the SMTP server core the way a transport would, with a scripted policy, no event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mailhouse.errors import Reply
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig

ACCEPT = Reply(250, "2.0.0", "Ok")


def default_rcpt(event: ev.RcptTo) -> Reply:
    if event.recipient is None or event.recipient.domain == "example.test":
        if event.recipient is not None and event.recipient.local.startswith("nobody"):
            return Reply(550, "5.1.1", "User unknown")
        return Reply(250, "2.1.5", "Ok")
    return Reply(554, "5.7.1", "Relay access denied")


@dataclass
class Driver:
    core: SmtpServer
    rcpt_policy: Callable[[ev.RcptTo], Reply] = default_rcpt
    messages: list[bytes] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)
    closed: bool = False
    tls_requested: bool = False
    _spool: list[bytes] | None = None

    @classmethod
    def new(cls, **config: object) -> Driver:
        cfg = SmtpServerConfig(hostname="mx.example.test", **config)  # type: ignore[arg-type]
        return cls(SmtpServer(cfg))

    def feed(self, data: bytes) -> bytes:
        """Send bytes, run the core until it needs more, return everything it wrote."""
        self.core.receive_data(data)
        for _ in range(100_000):
            event = self.core.next_event()
            self.events.append(event)
            if isinstance(event, ev.NeedData):
                break
            if isinstance(event, ev.Closed):
                self.closed = True
                break
            self._handle(event)
        return self.core.data_to_send()

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.MailFrom):
            self.core.respond(Reply(250, "2.1.0", "Ok"))
        elif isinstance(event, ev.RcptTo):
            self.core.respond(self.rcpt_policy(event))
        elif isinstance(event, ev.DataStart):
            self._spool = []
        elif isinstance(event, ev.DataChunk):
            assert self._spool is not None
            self._spool.append(event.data)
        elif isinstance(event, ev.DataComplete):
            assert self._spool is not None
            self.messages.append(b"".join(self._spool))
            self._spool = None
            self.core.respond(Reply(250, "2.0.0", "Ok: queued"))
        elif isinstance(event, ev.DataAborted | ev.TransactionReset):
            self._spool = None
        elif isinstance(event, ev.StartTls):
            self.tls_requested = True

    def start_tls(self) -> None:
        self.core.tls_established()


def codes(output: bytes) -> list[int]:
    """The reply codes of the final lines of each reply, in order."""
    return [int(line[:3]) for line in output.split(b"\r\n") if line[3:4] == b" "]
