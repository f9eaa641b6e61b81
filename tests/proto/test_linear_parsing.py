"""The protocol cores parse in time linear in the bytes received (issue 7, finding 3).

The SMTP core used to copy the rest of its buffer for every command it took off the front
(`line, buf = buf[:n], buf[n:]` on bytes), and the DATA and BDAT paths did the same per message
and per chunk: N pipelined commands cost O(N * buffer), and one connection pipelining NOOPs stalled
every other session on the loop for seconds.

No timing here (the machine is shared): two kinds of checks instead.
- Structural: the input buffer's own counter of octets moved by compaction never exceeds the
  octets consumed, and the storage is not replaced per command.
- Deterministic size: a few hundred thousand pipelined commands followed by 16 MiB that the core
  must still reach and discard. Linear: well under a second of work. Quadratic, as before: every
  command copies the 16 MiB behind it, 10^5 * 16 MiB = 1.6 TB of memcpy, far past the timeout.
"""

from __future__ import annotations

import pytest

from mailhouse.errors import Reply
from mailhouse.proto.input_buffer import COMPACT_AT, InputBuffer
from mailhouse.proto.pop3 import events as pev
from mailhouse.proto.pop3.server import LoginResult, MaildropEntry, Pop3Server, Pop3ServerConfig
from mailhouse.proto.smtp import events as ev
from mailhouse.proto.smtp.server import SmtpServer, SmtpServerConfig

TAIL = b"x" * (16 << 20)  # a "line" with no LF: parsed (discarded) only after everything before
NO_JUNK_LIMIT = 10**9  # these tests are about parsing cost, not about the junk-command limit


def run_smtp(core: SmtpServer) -> list[ev.Event]:
    """Drive the core until it needs data or closes, accepting every decision."""
    seen: list[ev.Event] = []
    while True:
        event = core.next_event()
        if isinstance(event, ev.NeedData | ev.Closed):
            return seen
        seen.append(event)
        if isinstance(event, ev.MailFrom | ev.RcptTo | ev.DataComplete):
            core.respond(Reply(250, "2.0.0", "Ok"))


def smtp_core(**config: int) -> SmtpServer:
    core = SmtpServer(SmtpServerConfig(hostname="mx.example.test",
                                       junk_command_limit=NO_JUNK_LIMIT, **config))
    core.data_to_send()
    return core


def reply_codes(out: bytes) -> list[bytes]:
    return [line[:3] for line in out.split(b"\r\n") if line[3:4] == b" "]


# --- the buffer itself -----------------------------------------------------------------------
def test_input_buffer_moves_no_more_than_it_consumes() -> None:
    buf = InputBuffer()
    consumed = 0
    for size in (1, 7, 100, 5000, 3):  # lines of assorted lengths, fed in one piece each round
        line = b"a" * size + b"\n"
        buf.feed(line * 2000)
        storage = buf.window()[0]
        while (at := buf.find_lf()) >= 0:
            assert buf.take(at + 1) == line
            consumed += at + 1
        assert len(buf) == 0
        assert buf.window()[0] is storage  # cleared in place, never rebuilt per line
    assert buf.moved <= consumed


def test_input_buffer_compacts_a_half_consumed_prefix() -> None:
    buf = InputBuffer()
    buf.feed(b"z" * COMPACT_AT + b"tail")
    buf.skip(COMPACT_AT - 1)
    assert buf.window()[1] == COMPACT_AT - 1 and buf.moved == 0  # small prefix: left in place
    buf.skip(1)
    assert buf.window()[1] == 0 and buf.moved == 4  # now dropped: 4 octets moved
    assert buf.peek(10) == b"tail" and buf.startswith(b"ta") and len(buf) == 4


def test_input_buffer_searches_each_octet_once() -> None:
    buf = InputBuffer()
    for _ in range(1000):
        buf.feed(b"y")
        assert buf.find_lf() == -1
    assert buf._scanned == 1000  # the next search starts after what was searched
    buf.feed(b"\nrest")
    assert buf.find_lf() == 1000
    assert buf.take(1001) == b"y" * 1000 + b"\n" and buf.peek(99) == b"rest"


# --- SMTP ------------------------------------------------------------------------------------
def test_smtp_pipelined_noops_move_each_octet_a_bounded_number_of_times() -> None:
    core = smtp_core()
    wire = b"EHLO client.test\r\n" + b"NOOP\r\n" * 100_000
    core.receive_data(wire)
    storage = core._in.window()[0]
    run_smtp(core)
    assert reply_codes(core.data_to_send()) == [b"250"] * 100_001
    assert core.buffered == 0 and core._in.window()[0] is storage
    assert core._in.moved <= len(wire)


@pytest.mark.timeout(30)
def test_smtp_pipelined_commands_before_a_huge_tail_are_linear() -> None:
    core = smtp_core()
    core.receive_data(b"EHLO client.test\r\n" + b"NOOP\r\n" * 100_000 + TAIL)
    run_smtp(core)
    out = core.data_to_send()
    assert reply_codes(out) == [b"250"] * 100_001 + [b"421"]  # the tail: no LF, discarded


@pytest.mark.timeout(30)
def test_smtp_pipelined_messages_through_data_are_linear() -> None:
    core = smtp_core()
    message = (b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
               b"Subject: s\r\n\r\n..dot\r\n.\r\n")
    core.receive_data(b"EHLO client.test\r\n" + message * 20_000 + TAIL)
    events = run_smtp(core)
    chunks = [e.data for e in events if isinstance(e, ev.DataChunk)]
    assert len([e for e in events if isinstance(e, ev.DataComplete)]) == 20_000
    assert b"".join(chunks) == b"Subject: s\r\n\r\n.dot\r\n" * 20_000
    assert reply_codes(core.data_to_send())[-1] == b"421"


@pytest.mark.timeout(30)
def test_smtp_pipelined_bdat_chunks_are_linear() -> None:
    core = smtp_core()
    envelope = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\n"
    core.receive_data(b"EHLO client.test\r\n" + envelope + b"BDAT 4\r\nab\r\n" * 50_000
                      + b"BDAT 0 LAST\r\n" + TAIL)
    events = run_smtp(core)
    content = b"".join(e.data for e in events if isinstance(e, ev.DataChunk))
    assert content == b"ab\r\n" * 50_000
    assert reply_codes(core.data_to_send()) == [b"250"] * 50_004 + [b"421"]


@pytest.mark.timeout(30)
def test_smtp_refused_bdat_chunks_are_skipped_linearly() -> None:
    core = smtp_core(max_errors=NO_JUNK_LIMIT)
    core.receive_data(b"EHLO client.test\r\n" + b"BDAT 3\r\nabc" * 50_000 + TAIL)
    run_smtp(core)
    codes = reply_codes(core.data_to_send())
    assert codes == [b"250"] + [b"503"] * 50_000 + [b"421"]


# --- POP3 ------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_pop3_pipelined_commands_before_a_huge_tail_are_linear() -> None:
    core = Pop3Server(Pop3ServerConfig(hostname="pop.example.test",
                                       junk_command_limit=NO_JUNK_LIMIT), tls_active=True)
    core.data_to_send()
    wire = b"USER alice\r\nPASS secret\r\n" + b"NOOP\r\n" * 100_000
    core.receive_data(wire + TAIL)
    while not isinstance(event := core.next_event(), pev.NeedData | pev.Closed):
        assert isinstance(event, pev.Credentials)
        core.login_result(LoginResult.OK, [MaildropEntry(10, "u1")])
    out = core.data_to_send().split(b"\r\n")
    assert out[2:-2] == [b"+OK"] * 100_000
    assert out[-2] == b"-ERR Line too long, closing connection"
    assert core._in.moved <= len(wire)
