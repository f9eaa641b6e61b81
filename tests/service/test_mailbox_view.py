"""A session's view of its selected mailbox (service/mailbox_view.py): sequence numbers stay in
step with the client whatever the store does, and removals wait for a point where RFC 9051
§7.5.1 allows them."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhouse.service.mailbox_view import (
    Exists,
    Expunge,
    FlagsChanged,
    MailboxView,
    Untagged,
    Vanished,
)

SEEN = frozenset({"\\Seen"})


def apply(client: list[int], responses: list[Untagged], added: list[int]) -> None:
    """What a client does with the responses: EXPUNGE renumbers, EXISTS appends the new ones
    (their UIDs, in order, are what it would fetch next)."""
    for response in responses:
        if isinstance(response, Expunge):
            del client[response.seq - 1]
        elif isinstance(response, Vanished):
            gone = set(response.uids)
            client[:] = [uid for uid in client if uid not in gone]
        elif isinstance(response, Exists):
            new = response.count - len(client)
            assert new >= 0
            client.extend(added[:new])
            del added[:new]
        elif isinstance(response, FlagsChanged):
            assert client[response.seq - 1] == response.uid


def test_removals_wait_for_a_point_that_allows_them() -> None:
    view = MailboxView([1, 2, 3, 4])
    view.note_removed([2])
    view.note_added([5])
    # During FETCH: the new message may be announced, the removal not; 2 keeps number 2.
    assert view.pending(expunge_allowed=False) == [Exists(5)]
    assert view.seq_of(2) == 2 and view.is_removed(2)
    assert view.pending(expunge_allowed=True) == [Expunge(2)]
    assert list(view.uids) == [1, 3, 4, 5]


def test_expunges_come_highest_first() -> None:
    view = MailboxView([10, 20, 30, 40, 50])
    view.note_removed([20, 40, 50])
    assert view.pending(expunge_allowed=True) == [Expunge(5), Expunge(4), Expunge(2)]
    assert list(view.uids) == [10, 30]


def test_vanished_replaces_expunge_under_qresync() -> None:
    view = MailboxView([1, 2, 3])
    view.note_removed([1, 3])
    assert view.pending(expunge_allowed=True, vanished=True) == [Vanished((1, 3))]
    assert list(view.uids) == [2]


def test_a_message_that_came_and_went_unannounced_is_never_mentioned() -> None:
    view = MailboxView([1])
    view.note_added([2, 3])
    view.note_removed([2])
    view.note_flags(2, SEEN, 7)
    assert view.pending(expunge_allowed=True) == [Exists(2)]
    assert list(view.uids) == [1, 3]


def test_flag_changes_follow_removals_and_skip_removed_messages() -> None:
    view = MailboxView([1, 2, 3])
    view.note_flags(3, SEEN, 5)
    view.note_flags(2, SEEN, 6)
    view.note_removed([2])
    assert view.pending(expunge_allowed=True) == [Expunge(2), FlagsChanged(2, 3, SEEN, 5)]


def test_the_latest_flags_win() -> None:
    view = MailboxView([1])
    view.note_flags(1, SEEN, 9)
    view.note_flags(1, frozenset(), 8)  # an older change read late
    assert view.pending(expunge_allowed=False) == [FlagsChanged(1, 1, SEEN, 9)]


def test_old_or_known_uids_are_not_new() -> None:
    view = MailboxView([5, 6])
    view.note_added([3, 6])
    assert view.pending(expunge_allowed=True) == []


def test_own_expunge_is_reported_with_what_was_pending() -> None:
    view = MailboxView([1, 2, 3])
    view.note_removed([1])  # another session's
    assert view.expunged_by_self([3], vanished=False) == [Expunge(3), Expunge(1)]
    assert list(view.uids) == [2]


def test_numbering_lookups() -> None:
    view = MailboxView([3, 7, 9])
    assert view.uid_of(2) == 7 and view.seq_of(9) == 3 and view.seq_of(8) is None
    assert view.uids_in(4, 100) == [7, 9]
    with pytest.raises(IndexError):
        view.uid_of(4)


def test_a_huge_expunge_is_linear() -> None:
    view = MailboxView(range(1, 100_001))
    view.note_removed(range(1, 100_001, 2))
    started = time.monotonic()
    out = view.pending(expunge_allowed=True)
    assert time.monotonic() - started < 5  # quadratic would be minutes
    assert len(out) == 50_000 and out[0] == Expunge(99_999) and out[-1] == Expunge(1)
    assert view.exists == 50_000


operations = st.lists(st.one_of(
    st.tuples(st.just("deliver"), st.integers(1, 3)),
    st.tuples(st.just("expunge"), st.lists(st.integers(0, 30), max_size=4)),
    st.tuples(st.just("flags"), st.integers(0, 30)),
    st.tuples(st.just("point"), st.booleans()),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(0, 10), ops=operations, vanished=st.booleans())
def test_the_client_stays_in_step_with_the_store(initial: int, ops: list[tuple[str, object]],
                                                 vanished: bool) -> None:
    store = list(range(1, initial + 1))  # what the store holds, by UID
    next_uid = initial + 1
    view = MailboxView(store)
    client = list(store)
    announced: list[int] = []  # UIDs the client will learn of from EXISTS, in order
    modseq = 0
    for op, arg in ops:
        if op == "deliver":
            assert isinstance(arg, int)
            new = list(range(next_uid, next_uid + arg))
            next_uid += arg
            store.extend(new)
            view.note_added(new)
        elif op == "expunge":
            assert isinstance(arg, list)
            gone = {store[i] for i in arg if i < len(store)}
            store = [uid for uid in store if uid not in gone]
            view.note_removed(gone)
        elif op == "flags":
            assert isinstance(arg, int)
            if arg < len(store):
                modseq += 1
                view.note_flags(store[arg], SEEN, modseq)
        else:
            responses = view.pending(expunge_allowed=bool(arg), vanished=vanished)
            announced = [uid for uid in view.uids if uid not in client]
            apply(client, responses, announced)
            assert client == list(view.uids)
            for response in responses:  # removed messages never get a flag update
                if isinstance(response, FlagsChanged):
                    assert response.uid in store
    responses = view.pending(expunge_allowed=True, vanished=vanished)
    announced = [uid for uid in view.uids if uid not in client]
    apply(client, responses, announced)
    assert client == list(view.uids) == store
