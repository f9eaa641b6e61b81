"""RFC 5267: ESORT (SORT RETURN), PARTIAL, and live results (UPDATE, ADDTO/REMOVEFROM,
CANCELUPDATE) across two sessions; a property test checks that a live result, applied as a
client would, always equals a fresh SEARCH or SORT."""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhouse.model import Account
from mailhouse.service.imap import ImapSettings
from mailhouse.service.imap.search_updates import ordered_set
from mailhouse.store.base import Store
from mailhouse.store.memory import MemoryStore
from tests.service.imap.conftest import Runner, logged_in, message, put
from tests.service.imap.harness import Client


def _numbers(text: str) -> list[int]:
    """A sequence-set in the order written (ranges ascending, RFC 5267 §3.2)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


class LiveModel:
    """What a client keeps of its live results, built only from what the server said
    (RFC 5267 §4.3.2-4.3.4): the initial ALL, then ADDTO/REMOVEFROM in order; a result in
    sequence numbers is renumbered by each EXPUNGE, which must never name a member."""

    _ESEARCH = re.compile(rb'\* ESEARCH \(TAG "([^"]+)"\)( UID)?(.*)')
    _PAIRS = re.compile(rb"(ADDTO|REMOVEFROM) \(([^)]*)\)")

    def __init__(self) -> None:
        self.results: dict[str, list[int]] = {}
        self.uid: dict[str, bool] = {}

    def read(self, out: bytes) -> None:
        for line in out.split(b"\r\n"):
            expunged = re.fullmatch(rb"\* (\d+) EXPUNGE", line)
            if expunged:
                n = int(expunged.group(1))
                for tag, members in self.results.items():
                    if not self.uid[tag]:
                        assert n not in members, (tag, n, members)  # REMOVEFROM came first
                        self.results[tag] = [m - 1 if m > n else m for m in members]
                continue
            m = self._ESEARCH.fullmatch(line)
            if not m:
                continue
            tag = m.group(1).decode()
            rest = m.group(3)
            if tag not in self.results:  # the command's own ESEARCH: no ALL when none match
                self.results[tag] = []
                self.uid[tag] = bool(m.group(2))
            every = re.match(rb" ALL (\S+)", rest)
            if every:
                self.results[tag] = _numbers(every.group(1).decode())
                continue
            for kind, body in self._PAIRS.findall(rest):
                words = body.decode().split()
                for pos_text, numbers_text in zip(words[::2], words[1::2], strict=True):
                    self._apply(tag, kind, int(pos_text), _numbers(numbers_text))

    def _apply(self, tag: str, kind: bytes, pos: int, numbers: list[int]) -> None:
        members = self.results[tag]
        if kind == b"ADDTO":
            assert not set(numbers) & set(members), (tag, numbers, members)
            if pos == 0:
                self.results[tag] = sorted(members + numbers)  # §4.3.3: mailbox order
            else:
                assert 1 <= pos <= len(members) + 1, (tag, pos, members)
                members[pos - 1:pos - 1] = numbers
        elif pos == 0:
            assert set(numbers) <= set(members), (tag, numbers, members)
            self.results[tag] = [n for n in members if n not in numbers]
        else:
            assert members[pos - 1:pos - 1 + len(numbers)] == numbers, (tag, pos, members)
            del members[pos - 1:pos - 1 + len(numbers)]


async def _inbox(client: Client, store: Store, account: Account, subjects: list[str]) -> None:
    for n, subject in enumerate(subjects, 1):
        await put(store, account, message(n, subject=subject, body="x" * n))
    await client.ok(b"s SELECT INBOX")


# --- ESORT (RFC 5267 §3) -----------------------------------------------------------------------
def test_esort_returns_esearch_in_sort_order(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await _inbox(client, store, account, ["d", "b", "c", "a", "e"])
        await client.ok(b"x STORE 5 +FLAGS (\\Deleted)")
        # §3.3: RETURN () is ALL, in sort order; only ascending runs are ranges (§3.2).
        out = await client.ok(b"E01 UID SORT RETURN () (REVERSE SUBJECT) UTF-8 UNDELETED")
        assert b'* ESEARCH (TAG "E01") UID ALL 1,3:2,4\r\n' not in out
        assert b'* ESEARCH (TAG "E01") UID ALL 1,3,2,4\r\n' in out
        out = await client.ok(b"E02 SORT RETURN (MIN MAX COUNT) (SUBJECT) UTF-8 ALL")
        assert b'* ESEARCH (TAG "E02") MIN 4 MAX 5 COUNT 5\r\n' in out  # first/last sorted
        out = await client.ok(b"E03 SORT RETURN (ALL) (SIZE) UTF-8 ALL")
        assert b'* ESEARCH (TAG "E03") ALL 1:5\r\n' in out
        out = await client.ok(b"E04 UID SORT RETURN (COUNT MIN) (SUBJECT) UTF-8 KEYWORD none")
        assert b'* ESEARCH (TAG "E04") UID COUNT 0\r\n' in out
        # SEARCHRES with SORT (RFC 5182 §1); SAVE with only MIN keeps only it (§2.4).
        out = await client.ok(b"E05 SORT RETURN (SAVE MIN) (SUBJECT) UTF-8 ALL")
        assert b'* ESEARCH (TAG "E05") MIN 4\r\n' in out
        out = await client.ok(b"E06 FETCH $ (UID)")
        assert b"* 4 FETCH (UID 4)" in out and out.count(b"FETCH (UID") == 1
        out = await client.ok(b"E07 UID SORT RETURN (SAVE) (REVERSE SUBJECT) UTF-8 ALL")
        assert b"ESEARCH" not in out
        out = await client.ok(b"E08 UID SEARCH RETURN (ALL) UID $")
        assert b'* ESEARCH (TAG "E08") UID ALL 1:5\r\n' in out
        # Without RETURN, SORT answers as before (RFC 5256).
        out = await client.ok(b"E09 SORT (SUBJECT) UTF-8 ALL")
        assert b"* SORT 4 2 3 1 5\r\n" in out

    imap(scenario)


def test_search_save_with_min_and_max(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await _inbox(client, store, account, ["a", "b", "c", "d"])
        out = await client.ok(b"a SEARCH RETURN (SAVE MIN MAX) 2:4")
        assert b'* ESEARCH (TAG "a") MIN 2 MAX 4\r\n' in out
        out = await client.ok(b"b UID SEARCH RETURN (ALL) UID $")
        assert b'* ESEARCH (TAG "b") UID ALL 2,4\r\n' in out  # RFC 5182 §2.4
        await client.ok(b"c SEARCH RETURN (SAVE MIN COUNT) 2:4")
        out = await client.ok(b"d UID SEARCH RETURN (ALL) UID $")
        assert b'* ESEARCH (TAG "d") UID ALL 2:4\r\n' in out

    imap(scenario)


def test_ordered_set_keeps_order() -> None:
    assert ordered_set([23765, 23764, 23763, 23761]) == "23765,23764,23763,23761"
    assert ordered_set([5, 6, 7, 3, 1, 2]) == "5:7,3,1:2"
    assert ordered_set([]) == ""


# --- PARTIAL (RFC 5267 §4.4) -------------------------------------------------------------------
def test_partial_windows(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await _inbox(client, store, account, ["e", "d", "c", "b", "a", "f"])
        out = await client.ok(b"A01 UID SEARCH RETURN (PARTIAL 1:3) ALL")
        assert b'* ESEARCH (TAG "A01") UID PARTIAL (1:3 1:3)\r\n' in out
        out = await client.ok(b"A02 SEARCH RETURN (PARTIAL 5:10 COUNT) ALL")
        assert b'* ESEARCH (TAG "A02") COUNT 6 PARTIAL (5:10 5:6)\r\n' in out  # short
        out = await client.ok(b"A03 SEARCH RETURN (PARTIAL 3:2) ALL")
        assert b'* ESEARCH (TAG "A03") PARTIAL (3:2 2:3)\r\n' in out  # 3:2 is 2:3
        out = await client.ok(b"A04 UID SEARCH RETURN (PARTIAL 24000:24500) ALL")
        assert b'* ESEARCH (TAG "A04") UID PARTIAL (24000:24500 NIL)\r\n' in out
        out = await client.ok(b"A05 UID SORT RETURN (PARTIAL 2:4) (SUBJECT) UTF-8 ALL")
        assert b'* ESEARCH (TAG "A05") UID PARTIAL (2:4 4,3,2)\r\n' in out
        out = await client.ok(b"A06 SORT RETURN (PARTIAL 1:2 MIN) (SUBJECT) UTF-8 ALL")
        assert b'* ESEARCH (TAG "A06") MIN 5 PARTIAL (1:2 5,4)\r\n' in out
        out = await client.ok(b"A07 SEARCH RETURN (CONTEXT) ALL")  # a hint only (§4.2)
        assert b'* ESEARCH (TAG "A07") ALL 1:6\r\n' in out

    imap(scenario)


def test_return_option_errors(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        await _inbox(client, store, account, ["a", "b"])
        bad = [
            b"a SEARCH RETURN (PARTIAL 1:5 ALL) ALL",  # RFC 5267 §4.4
            b"b SEARCH RETURN (PARTIAL 1:5 PARTIAL 6:9) ALL",
            b"c SEARCH RETURN (ALL ALL) ALL",
            b"d SEARCH RETURN (PARTIAL -1:-5) ALL",  # RFC 9394's form, not RFC 5267's
            b"e SEARCH RETURN (PARTIAL 0:5) ALL",
            b"f SEARCH RETURN (PARTIAL 1:*) ALL",
            b"g SORT RETURN (PARTIAL 1:2 ALL) (SUBJECT) UTF-8 ALL",
            b"h SEARCH RETURN (PARTIAL) ALL",
            b"i SEARCH RETURN (NOTIFY) ALL",
            b"j CANCELUPDATE",
            b"k CANCELUPDATE b01",  # quoted strings only (RFC 5267 §5)
        ]
        for line in bad:
            out = await client.cmd(line)
            assert out.startswith(line.split(b" ")[0] + b" BAD"), (line, out)
        out = await client.cmd(b"l CANCELUPDATE \"nothing\"")
        assert out.startswith(b"l NO"), out
        out = await client.ok(b"m SEARCH RETURN (UPDATE) ALL")
        assert b'* ESEARCH (TAG "m")\r\n' in out  # UPDATE alone: no data, just the tag
        out = await client.cmd(b"m SEARCH RETURN (UPDATE COUNT) ALL")
        assert out.startswith(b"m BAD"), out  # RFC 5267 §4.3: tag reuse
        out = await client.cmd(b'n CANCELUPDATE "m" "nothing"')
        assert out.startswith(b"n NO"), out  # nothing cancelled
        await client.ok(b'o CANCELUPDATE "m"')
        out = await client.cmd(b'p CANCELUPDATE "m"')
        assert out.startswith(b"p NO"), out
        await client.ok(b"q UNSELECT")
        out = await client.cmd(b'r CANCELUPDATE "m"')
        assert out.startswith(b"r BAD"), out  # selected state only
        out = await client.cmd(b"s SEARCH RETURN (UPDATE) ALL")
        assert out.startswith(b"s BAD"), out

    imap(scenario)


def test_update_limit_and_refusals(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = Client(store, account, settings=ImapSettings(max_search_updates=2))
        await client.login()
        await _inbox(client, store, account, ["a", "b"])
        await client.ok(b"B01 UID SEARCH RETURN (UPDATE) SEEN")
        await client.ok(b"B02 UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL")
        # §4.3.1: over the limit, an untagged NO [NOUPDATE], the other options honoured.
        out = await client.ok(b"B03 UID SORT RETURN (UPDATE COUNT) (SUBJECT) UTF-8 ALL")
        assert b'* ESEARCH (TAG "B03") UID COUNT 2\r\n' in out
        assert b'* NO [NOUPDATE "B03"]' in out
        assert b"B03 OK" in out and b"will not notify" in out
        await client.ok(b'B04 CANCELUPDATE "B01"')
        out = await client.ok(b"B05 UID SEARCH RETURN (UPDATE COUNT) UNSEEN")
        assert b"NOUPDATE" not in out and b"will notify" in out
        # OLDER/YOUNGER change with the clock, not the mailbox: no live result (§4.3.1).
        await client.ok(b'B06 CANCELUPDATE "B05"')
        out = await client.ok(b"B07 SEARCH RETURN (UPDATE COUNT) YOUNGER 3600")
        assert b'* NO [NOUPDATE "B07"]' in out and b'COUNT 2' in out

    imap(scenario)


# --- live results across two sessions (RFC 5267 §4.3) ------------------------------------------
def test_addto_after_exists_and_removefrom_before_expunge(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a = await logged_in(store, account)
        b = await logged_in(store, account)
        await _inbox(a, store, account, ["a", "b", "c"])
        await b.ok(b"s SELECT INBOX")
        await b.ok(b"x STORE 2 +FLAGS (\\Seen)")
        out = await a.ok(b"B01 UID SEARCH RETURN (UPDATE ALL) UNSEEN")
        assert b'* ESEARCH (TAG "B01") UID ALL 1,3\r\n' in out
        out = await a.ok(b"C01 SEARCH RETURN (UPDATE) UNSEEN")
        # Another session delivers: EXISTS first, then ADDTO (§4.3.3).
        await put(store, account, message(4))
        out = await a.ok(b"n NOOP")
        assert b"* 4 EXISTS\r\n" in out
        assert b'* ESEARCH (TAG "B01") UID ADDTO (0 4)\r\n' in out
        assert b'* ESEARCH (TAG "C01") ADDTO (0 4)\r\n' in out
        assert out.index(b"EXISTS") < out.index(b"ADDTO")
        # A flag change by another session: REMOVEFROM.
        await b.ok(b"y STORE 1 +FLAGS (\\Seen)")
        out = await a.ok(b"n NOOP")
        assert b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 1)\r\n' in out
        # An expunge by another session: REMOVEFROM before the EXPUNGE (§4.3.4).
        await b.ok(b"z STORE 3 +FLAGS (\\Deleted)")
        await b.ok(b"z EXPUNGE")
        out = await a.ok(b"n NOOP")
        assert b'* ESEARCH (TAG "C01") REMOVEFROM (0 3)\r\n' in out
        assert b"* 3 EXPUNGE\r\n" in out
        assert out.index(b"REMOVEFROM (0 3)") < out.index(b"* 3 EXPUNGE")
        # Expunges are held back during FETCH; the REMOVEFROM may go out at once.
        await b.ok(b"z STORE 3 +FLAGS (\\Deleted)")  # message 4, now number 3
        await b.ok(b"z EXPUNGE")
        out = await a.ok(b"f FETCH 1 (FLAGS)")
        assert b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 4)\r\n' in out
        assert b'* ESEARCH (TAG "C01") REMOVEFROM (0 3)\r\n' in out
        assert b"EXPUNGE" not in out
        out = await a.ok(b"n NOOP")
        assert b"* 3 EXPUNGE\r\n" in out and b"REMOVEFROM" not in out
        # After CANCELUPDATE, nothing more about B01.
        await a.ok(b'c CANCELUPDATE "B01"')
        await put(store, account, message(5))
        out = await a.ok(b"n NOOP")
        assert b'TAG "B01"' not in out and b'* ESEARCH (TAG "C01") ADDTO (0 3)\r\n' in out
        # A new SELECT ends every live result.
        await a.ok(b"s SELECT INBOX")
        await put(store, account, message(6))
        out = await a.ok(b"n NOOP")
        assert b"ESEARCH" not in out

    imap(scenario)


def test_own_changes_update_at_the_end_of_the_command(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a = await logged_in(store, account)
        await _inbox(a, store, account, ["a", "b", "c"])
        await a.ok(b"B01 UID SEARCH RETURN (UPDATE) FLAGGED")
        await a.ok(b"S01 SORT RETURN (UPDATE) (SUBJECT) UTF-8 UNDELETED")
        out = await a.ok(b"x STORE 2:3 +FLAGS (\\Flagged)")
        assert b'* ESEARCH (TAG "B01") UID ADDTO (0 2:3)\r\n' in out
        out = await a.ok(b"y STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert b'* ESEARCH (TAG "S01") REMOVEFROM (1 1)\r\n' in out
        out = await a.ok(b"z EXPUNGE")
        assert b'* ESEARCH (TAG "S01")' not in out  # already out of the SORT result
        assert b"* 1 EXPUNGE\r\n" in out
        out = await a.ok(b"w UID STORE 3 -FLAGS (\\Flagged)")
        assert b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 3)\r\n' in out
        # The client's own EXPUNGE of a member: REMOVEFROM first, then EXPUNGE.
        await a.ok(b"v STORE 1 +FLAGS.SILENT (\\Deleted)")
        out = await a.ok(b"v UID EXPUNGE 2")
        assert out.index(b'UID REMOVEFROM (0 2)') < out.index(b"* 1 EXPUNGE")

    imap(scenario)


def test_sort_positions(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a = await logged_in(store, account)
        b = await logged_in(store, account)
        await _inbox(a, store, account, ["b", "d", "f"])
        await b.ok(b"s SELECT INBOX")
        out = await a.ok(b"S01 UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN")
        assert b'* ESEARCH (TAG "S01") UID ALL 1:3\r\n' in out
        out = await a.ok(b"S02 SORT RETURN (UPDATE ALL) (REVERSE SUBJECT) UTF-8 UNSEEN")
        assert b'* ESEARCH (TAG "S02") ALL 3,2,1\r\n' in out
        await put(store, account, message(4, subject="c"))  # UID 4
        await put(store, account, message(5, subject="a"))  # UID 5
        await put(store, account, message(6, subject="e"))  # UID 6
        out = await a.ok(b"n NOOP")
        # Sorted a b c d e f: "a" at 1, "c" at 3, "e" at 5, each after the ones before.
        assert b'* ESEARCH (TAG "S01") UID ADDTO (1 5 3 4 5 6)\r\n' in out
        assert b'* ESEARCH (TAG "S02") ADDTO (2 6 4 4 6 5)\r\n' in out
        # Two neighbours leave together: one pair (§4.3.4).
        await b.ok(b"x UID STORE 2,4 +FLAGS (\\Seen)")
        out = await a.ok(b"n NOOP")
        assert b'* ESEARCH (TAG "S01") UID REMOVEFROM (3 4,2)\r\n' in out
        assert b'* ESEARCH (TAG "S02") REMOVEFROM (3 2,4)\r\n' in out
        # They come back next to each other: one pair, order kept, no descending range.
        await b.ok(b"x UID STORE 2,4 -FLAGS (\\Seen)")
        out = await a.ok(b"n NOOP")
        assert b'* ESEARCH (TAG "S01") UID ADDTO (3 4,2)\r\n' in out
        assert b'* ESEARCH (TAG "S02") ADDTO (3 2,4)\r\n' in out

    imap(scenario)


def test_live_results_during_idle(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a = await logged_in(store, account)
        await _inbox(a, store, account, ["a"])
        b = await logged_in(store, account)
        await b.ok(b"s SELECT INBOX")
        await a.ok(b"B01 UID SEARCH RETURN (UPDATE) UNSEEN")
        await a.ok(b"C01 SEARCH RETURN (UPDATE) UNSEEN")
        await a.raw(b"i IDLE\r\n")
        await put(store, account, message(2))
        lines = await a.idle_changes()
        assert lines == [b"2 EXISTS", b'ESEARCH (TAG "B01") UID ADDTO (0 2)',
                         b'ESEARCH (TAG "C01") ADDTO (0 2)']
        # During IDLE an expunge is told at once: each REMOVEFROM before it (§4.3.4).
        await b.ok(b"x STORE 1 +FLAGS.SILENT (\\Deleted)")
        await b.ok(b"y EXPUNGE")
        lines = await a.idle_changes()
        assert lines == [b'ESEARCH (TAG "B01") UID REMOVEFROM (0 1)',
                         b'ESEARCH (TAG "C01") REMOVEFROM (0 1)', b"1 EXPUNGE"]
        out = await a.raw(b"DONE\r\n")
        assert b"i OK" in out

    imap(scenario)


# --- the property: a live result, applied, is a fresh SEARCH/SORT ------------------------------
_CONTEXTS = [
    (b"L1", b"UID SEARCH RETURN (UPDATE ALL) UNSEEN", b"UID SEARCH UNSEEN"),
    (b"L2", b"SEARCH RETURN (UPDATE ALL) OR FLAGGED DELETED", b"SEARCH OR FLAGGED DELETED"),
    (b"L3", b"UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNDELETED",
     b"UID SORT (SUBJECT) UTF-8 UNDELETED"),
    (b"L4", b"SORT RETURN (UPDATE ALL) (REVERSE SIZE SUBJECT) UTF-8 NOT SEEN",
     b"SORT (REVERSE SIZE SUBJECT) UTF-8 NOT SEEN"),
]
_OPS = st.lists(st.tuples(
    st.sampled_from(["deliver", "seen", "unseen", "flag", "delete", "expunge", "noop",
                     "fetch", "move", "uidexpunge", "search"]),
    st.integers(0, 1), st.integers(1, 6)), max_size=25)


def _fresh(out: bytes) -> list[int]:
    m = re.search(rb"^\* (?:SEARCH|SORT)((?: \d+)*)\r$", out, re.M)
    assert m, out
    return [int(n) for n in m.group(1).split()]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, initial=st.lists(st.sampled_from("abc"), max_size=4))
def test_live_results_equal_a_fresh_search(ops: list[tuple[str, int, int]],
                                           initial: list[str]) -> None:
    async def main() -> None:
        store: Store = MemoryStore()
        await store.open()
        await store.add_domain("example.org")
        account = await store.add_account("alice@example.org", "x")
        a, b = Client(store, account), Client(store, account)
        await a.login()
        await b.login()
        await _inbox(a, store, account, initial)
        await b.ok(b"s SELECT INBOX")
        model = LiveModel()
        for tag, command, _ in _CONTEXTS:
            model.read(await a.ok(tag + b" " + command))
        count = len(initial)
        for op, who, n in ops:
            c = (a, b)[who]
            if op == "deliver":
                count += 1
                await put(store, account, message(count, subject="abc"[n % 3], body="x" * n))
                continue
            if op in ("seen", "unseen", "flag", "delete"):
                flag = {"seen": b"\\Seen", "unseen": b"\\Seen", "flag": b"\\Flagged",
                        "delete": b"\\Deleted"}[op]
                sign = b"-" if op == "unseen" else b"+"
                out = await c.cmd(b"x UID STORE %d %sFLAGS (%s)" % (n, sign, flag))
            elif op == "expunge":
                out = await c.ok(b"x EXPUNGE")
            elif op == "fetch":
                out = await c.cmd(b"x FETCH 1:* (FLAGS)")  # EXPUNGE held back here
            elif op == "search":
                out = await c.ok(b"x SEARCH UNSEEN")  # and here
            elif op == "move":
                out = await c.ok(b"x UID MOVE %d Trash" % n)  # REMOVEFROM, then EXPUNGE
            elif op == "uidexpunge":
                out = await c.ok(b"x UID EXPUNGE 1:%d" % n)
            else:
                out = await c.ok(b"x NOOP")
            if c is a:
                model.read(out)
        model.read(await a.ok(b"z NOOP"))
        for tag, _, fresh in _CONTEXTS:
            out = await a.ok(b"f " + fresh)
            assert model.results[tag.decode()] == _fresh(out), (tag, out)
        await store.close()

    asyncio.run(main())


def test_announced(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        client = await logged_in(store, account)
        out = await client.ok(b"c CAPABILITY")
        for atom in (b" ESORT", b" CONTEXT=SEARCH", b" CONTEXT=SORT", b" SORT", b" ESEARCH"):
            assert atom + b" " in out or atom + b"\r\n" in out, atom

    imap(scenario)


def test_sequence_numbers_and_saved_result_are_fixed_when_the_command_runs(
        imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a = await logged_in(store, account)
        b = await logged_in(store, account)
        await _inbox(a, store, account, ["a", "b", "c", "d"])
        await b.ok(b"s SELECT INBOX")
        out = await a.ok(b"B01 UID SEARCH RETURN (UPDATE ALL) 1:2 UNSEEN")
        assert b'* ESEARCH (TAG "B01") UID ALL 1:2\r\n' in out
        await a.ok(b"x SEARCH RETURN (SAVE) 3")
        # "$" is UID 3 when the command runs; the live program keeps UID 3.
        out = await a.ok(b"B02 UID SEARCH RETURN (UPDATE SAVE ALL) $ UNSEEN")
        assert b'* ESEARCH (TAG "B02") UID ALL 3\r\n' in out
        await b.ok(b"y STORE 1 +FLAGS (\\Deleted)")
        await b.ok(b"y EXPUNGE")
        await b.ok(b"y STORE 1,3 +FLAGS (\\Seen)")  # UIDs 2 and 4
        await b.ok(b"y STORE 1,3 -FLAGS (\\Seen)")
        out = await a.ok(b"n NOOP")
        # UID 3 became number 2 and UID 4 number 3: neither joins B01; UID 4 not B02.
        assert b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 1)\r\n' in out
        assert b"ADDTO" not in out

    imap(scenario)


def test_live_result_dropped_when_it_cannot_be_kept(imap: Runner) -> None:
    async def scenario(store: Store, account: Account) -> None:
        a = Client(store, account, settings=ImapSettings(search_content_limit=1))
        await a.login()
        await _inbox(a, store, account, ["a"])
        out = await a.ok(b"B01 UID SEARCH RETURN (UPDATE COUNT) BODY x")
        assert b"COUNT 1" in out and b"will notify" in out
        await put(store, account, message(2, body="x"))
        await put(store, account, message(3, body="x"))
        out = await a.ok(b"n NOOP")  # two bodies to read, one allowed: no more updates
        assert b'* NO [NOUPDATE "B01"]' in out and b"ADDTO" not in out
        await put(store, account, message(4, body="x"))
        out = await a.ok(b"n NOOP")
        assert b"ESEARCH" not in out and b"NOUPDATE" not in out
        out = await a.cmd(b'c CANCELUPDATE "B01"')
        assert out.startswith(b"c NO"), out

    imap(scenario)
