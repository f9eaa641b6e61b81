"""Two sessions on one mailbox, with deliveries, flag changes and expunges from both in any
order: each client's picture of sequence numbers (built only from what the server told it:
EXISTS, EXPUNGE, VANISHED, FETCH UID) stays exact (RFC 9051 §7.5.1, RFC 7162 §3.2.10)."""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhouse.store.base import Store
from mailhouse.store.memory import MemoryStore
from tests.service.imap.conftest import message, put
from tests.service.imap.harness import Client

_LINE = re.compile(rb"\* (\d+) (EXISTS|EXPUNGE|FETCH \(UID (\d+))|\* VANISHED (\S+)")


class Picture:
    """What one client knows: UID by sequence number (None: told it exists, UID not seen)."""

    def __init__(self) -> None:
        self.uids: list[int | None] = []

    def read(self, out: bytes) -> None:
        for m in _LINE.finditer(out):
            if m.group(4) is not None:
                gone = set()
                for part in m.group(4).decode().split(","):
                    lo, _, hi = part.partition(":")
                    gone.update(range(int(lo), int(hi or lo) + 1))
                unknown = gone - set(self.uids)
                self.uids = [u for u in self.uids if u not in gone]
                for uid in sorted(unknown):
                    # RFC 7162 §3.2.10: VANISHED lowers the count by one per UID; a UID the
                    # client never learned is one of its unknown slots, the one between the
                    # known UIDs around it (slots in one run are interchangeable).
                    self._drop_unknown(uid)
                continue
            n = int(m.group(1))
            kind = m.group(2)
            assert kind is not None
            if kind == b"EXISTS":
                assert n >= len(self.uids), (n, self.uids)
                self.uids += [None] * (n - len(self.uids))
            elif kind == b"EXPUNGE":
                assert 1 <= n <= len(self.uids), (n, self.uids)
                del self.uids[n - 1]
            else:
                uid = int(m.group(3))
                assert 1 <= n <= len(self.uids), (n, uid, self.uids)
                if self.uids[n - 1] is None:
                    self.uids[n - 1] = uid
                assert self.uids[n - 1] == uid, (n, uid, self.uids)


    def _drop_unknown(self, uid: int) -> None:
        below = 0
        for i, known in enumerate(self.uids):
            if known is None:
                above = next((u for u in self.uids[i:] if u is not None), None)
                if below < uid and (above is None or uid < above):
                    del self.uids[i]
                    return
            else:
                below = known
        raise AssertionError(f"VANISHED {uid}: no unknown message it could be: {self.uids}")


OPS = st.lists(st.tuples(
    st.sampled_from(["deliver", "flag", "delete", "expunge", "noop", "fetch", "uidexpunge",
                     "move"]),
    st.integers(0, 1), st.integers(1, 6)), max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, qresync=st.booleans())
def test_two_sessions_stay_exact(ops: list[tuple[str, int, int]], qresync: bool) -> None:
    async def main() -> None:
        store: Store = MemoryStore()
        await store.open()
        await store.add_domain("example.org")
        account = await store.add_account("alice@example.org", "x")
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        clients = [Client(store, account), Client(store, account)]
        pictures = [Picture(), Picture()]
        for c, p in zip(clients, pictures, strict=True):
            await c.login()
            if qresync:
                await c.ok(b"q ENABLE QRESYNC")
            p.read(await c.ok(b"s SELECT INBOX"))
            p.read(await c.ok(b"f FETCH 1:* (UID)") if p.uids else b"")
        count = 0
        for op, who, n in ops:
            c, p = clients[who], pictures[who]
            if op == "deliver":
                count += 1
                await put(store, account, message(count))
                continue
            if qresync and None in p.uids:
                # A QRESYNC client learns the UIDs of new messages before VANISHED can name
                # them (RFC 7162 §3.2.10 speaks in UIDs).
                p.read(await c.cmd(b"u FETCH 1:* (UID)"))
            size = len(p.uids)
            seq = min(n, size)
            if op == "flag" and size:
                p.read(await c.ok(b"a STORE %d +FLAGS (\\Flagged)" % seq))
            elif op == "delete" and size:
                p.read(await c.ok(b"a STORE %d +FLAGS (\\Deleted)" % seq))
            elif op == "expunge":
                p.read(await c.ok(b"a EXPUNGE"))
            elif op == "uidexpunge":
                p.read(await c.ok(b"a UID EXPUNGE 1:%d" % n))
            elif op == "move" and size:
                p.read(await c.ok(b"a MOVE %d Trash" % seq))
            elif op == "fetch" and size:
                p.read(await c.cmd(b"a FETCH 1:* (UID FLAGS)"))  # NO [EXPUNGEISSUED] is fine
            else:
                p.read(await c.ok(b"a NOOP"))
        uids = [m.uid for m in await store.list_messages(inbox.id)]
        for c, p in zip(clients, pictures, strict=True):
            p.read(await c.ok(b"z NOOP"))
            if p.uids:
                p.read(await c.cmd(b"y FETCH 1:* (UID)"))
            assert p.uids == uids
        await store.close()

    asyncio.run(main())
