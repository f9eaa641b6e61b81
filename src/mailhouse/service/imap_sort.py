"""SORT and THREAD (RFC 5256; DISPLAYFROM/DISPLAYTO of RFC 5957) over the search fields stored
at delivery: no message is read or re-parsed.

Strings compare as stored: the sort keys are kept in i;ascii-casemap form, the collation RFC
5256 §3 requires, so ordinary code-point order is right. Ties fall back to the mailbox order
(RFC 5256 §3: "sorted in the order in which they appear in the mailbox", i.e. by UID).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailhouse.service.imap_search import Candidate

SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM",
                       "DISPLAYTO"})


def _sent(m: Candidate) -> float:
    # RFC 5256 §3 DATE: the Date header; without a valid one, the internal date.
    if m.fields.sent_date is not None:
        return float(m.fields.sent_date)
    return m.internal_date.timestamp()


_KEY: dict[str, Callable[[Candidate], Any]] = {
    "ARRIVAL": lambda m: m.internal_date.timestamp(),
    "CC": lambda m: m.fields.sort_cc,
    "DATE": _sent,
    "FROM": lambda m: m.fields.sort_from,
    "SIZE": lambda m: m.size,
    "SUBJECT": lambda m: m.fields.base_subject,
    "TO": lambda m: m.fields.sort_to,
    "DISPLAYFROM": lambda m: m.fields.display_from,
    "DISPLAYTO": lambda m: m.fields.display_to,
}


def sort_values(m: Candidate, criteria: Sequence[tuple[str, bool]]) -> tuple[Any, ...]:
    """The values `sort_messages` orders `m` by, one per criterion (ties: by UID)."""
    return tuple(_KEY[name](m) for name, _ in criteria)


def sort_messages(messages: Iterable[Candidate],
                  criteria: Sequence[tuple[str, bool]]) -> list[Candidate]:
    """Messages in SORT order; `criteria` are (key, reversed) as the parser gives them."""
    ordered = sorted(messages, key=lambda m: m.uid)  # the final tie-breaker
    for name, reverse in reversed(criteria):  # stable sorts, least significant key first
        ordered.sort(key=_KEY[name], reverse=reverse)
    return ordered


@dataclass(slots=True)
class ThreadNode:
    """A node of a thread tree; `message` is None for a dummy (a referenced message that is
    not in the mailbox, RFC 5256 §2.2)."""

    message: Candidate | None = None
    children: list[ThreadNode] = field(default_factory=list)
    parent: ThreadNode | None = None


def render_threads(roots: Sequence[ThreadNode], number: Callable[[Candidate], int]) -> bytes:
    """The THREAD response's data (RFC 5256 §4): "(1 2 (3)(4 5))" per thread, concatenated.
    Iterative: a thread may be thousands of messages deep."""
    out = bytearray()
    stack: list[ThreadNode | bytes] = []
    for root in reversed(roots):
        stack += [b")", root, b"("]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out += item
            continue
        node: ThreadNode = item
        numbers: list[bytes] = []
        while True:  # a chain of only children is one run of numbers
            if node.message is not None:
                numbers.append(b"%d" % number(node.message))
            if len(node.children) != 1:
                break
            node = node.children[0]
        out += b" ".join(numbers)
        if node.children:
            if numbers:
                out += b" "
            for child in reversed(node.children):
                stack += [b")", child, b"("]
    return bytes(out)


def ordered_subject(messages: Iterable[Candidate]) -> list[ThreadNode]:
    """THREAD=ORDEREDSUBJECT (RFC 5256 §2.1): threads by base subject, each message a child of
    the first one; threads ordered by their first message's sent date."""
    by_subject: dict[str, list[Candidate]] = {}
    for m in sort_messages(messages, [("SUBJECT", False), ("DATE", False)]):
        by_subject.setdefault(m.fields.base_subject, []).append(m)
    roots = []
    for group in by_subject.values():
        root = ThreadNode(group[0])
        root.children = [ThreadNode(m, parent=root) for m in group[1:]]
        roots.append(root)
    roots.sort(key=lambda node: (_sent(_first(node)), _first(node).uid))
    return roots


def _first(node: ThreadNode) -> Candidate:
    while node.message is None:
        node = node.children[0]
    return node.message


def references(messages: Iterable[Candidate]) -> list[ThreadNode]:
    """THREAD=REFERENCES (RFC 5256 §2.2): parent/child links from References and In-Reply-To,
    dummies pruned, then threads merged by base subject."""
    messages = sorted(messages, key=lambda m: m.uid)
    table: dict[str, ThreadNode] = {}

    def container(msg_id: str) -> ThreadNode:
        node = table.get(msg_id)
        if node is None:
            node = table[msg_id] = ThreadNode()
        return node

    def ancestor(node: ThreadNode, other: ThreadNode) -> bool:
        while node is not None:  # is `other` an ancestor of (or equal to) `node`?
            if node is other:
                return True
            node = node.parent  # type: ignore[assignment]
        return False

    def link(parent: ThreadNode, child: ThreadNode) -> None:
        if child.parent is not None or ancestor(parent, child):
            return  # already placed, or a loop (§2.2 step 1.A)
        child.parent = parent
        parent.children.append(child)

    # Step 1: containers by Message-ID; duplicates and messages without one get unique ids.
    for m in messages:
        msg_id = m.fields.message_id
        if not msg_id or (msg_id in table and table[msg_id].message is not None):
            msg_id = f"\0{m.uid}"  # cannot collide with a real msg-id
        node = container(msg_id)
        node.message = m
        refs = list(m.fields.references) or list(m.fields.in_reply_to[:1])
        previous: ThreadNode | None = None
        for ref in refs:  # 1.A: link the references in order
            current = container(ref)
            if previous is not None:
                link(previous, current)
            previous = current
        # 1.B: the last reference is this message's parent (replacing any earlier guess).
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if previous is not None and previous is not node and not ancestor(previous, node):
            link(previous, node)
    # Step 2: the root set.
    roots = [node for node in table.values() if node.parent is None]
    # Step 3: prune dummies (recursively, children first).
    roots = _prune(roots)
    # Step 4: sort siblings by sent date (of the message, or of a dummy's first child).
    _sort_siblings(roots)
    # Step 5: merge threads with the same base subject.
    roots = _merge_by_subject(roots)
    # Step 6: children sorted again, then the threads by their first message's sent date.
    _sort_siblings(roots)
    return roots


def _prune(roots: list[ThreadNode]) -> list[ThreadNode]:
    """RFC 5256 §2.2 step 3, children before parents (iteratively: chains may be long)."""
    order: list[ThreadNode] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        kept: list[ThreadNode] = []
        for child in node.children:
            if child.message is not None:
                kept.append(child)
            elif child.children:  # 3.B: a dummy's children move up a level
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
            # 3.A: a dummy without children goes
        node.children = kept
    out: list[ThreadNode] = []
    for node in roots:
        if node.message is not None:
            out.append(node)
        elif len(node.children) == 1:  # at the top, only a lone child moves up
            node.children[0].parent = None
            out.append(node.children[0])
        elif node.children:
            out.append(node)  # a dummy root holding several children stays
    return out


def _date_of(node: ThreadNode) -> tuple[float, int]:
    m = node.message if node.message is not None else _first_by_date(node)
    return (_sent(m), m.uid)


def _first_by_date(node: ThreadNode) -> Candidate:
    return min((_first(child) for child in node.children), key=lambda m: (_sent(m), m.uid))


def _sort_siblings(nodes: list[ThreadNode]) -> None:
    stack = [nodes]
    while stack:
        siblings = stack.pop()
        siblings.sort(key=_date_of)
        stack.extend(node.children for node in siblings)


def _merge_by_subject(roots: list[ThreadNode]) -> list[ThreadNode]:
    """RFC 5256 §2.2 step 5: roots whose base subjects are equal join one thread."""
    subjects: dict[str, ThreadNode] = {}
    for root in roots:
        subject = _subject_of(root)
        if not subject:
            continue
        other = subjects.get(subject)
        if other is None or (root.message is None and other.message is not None) or (
                other.message is not None and root.message is not None
                and _is_reply(other) and not _is_reply(root)):
            subjects[subject] = root
    out: list[ThreadNode] = []
    for root in roots:
        if root.parent is not None:
            continue  # merged under a new dummy already (5.C.iv)
        subject = _subject_of(root)
        keeper = subjects.get(subject) if subject else None
        if keeper is None or keeper is root:
            out.append(root)
            continue
        if keeper.message is None and root.message is None:
            keeper.children.extend(root.children)  # 5.C.i: both dummies
            for child in root.children:
                child.parent = keeper
        elif keeper.message is None or (_is_reply(root) and not _is_reply(keeper)):
            root.parent = keeper  # 5.C.ii/iii: a dummy, or a reply goes under the original
            keeper.children.append(root)
        else:
            # 5.C.iv: neither is a reply of the other: both go under a new dummy.
            dummy = ThreadNode(children=[keeper, root])
            index = out.index(keeper) if keeper in out else len(out)
            keeper.parent = root.parent = dummy
            if keeper in out:
                out[index] = dummy
            else:
                out.append(dummy)
            subjects[subject] = dummy
    return out


def _subject_of(node: ThreadNode) -> str:
    m = node.message if node.message is not None else (
        node.children[0].message if node.children else None)
    return m.fields.base_subject if m is not None else ""


def _is_reply(node: ThreadNode) -> bool:
    """RFC 5256 §2.1: the subject had a "Re:"-like prefix or "(fwd)" trailer removed. The
    stored fields keep the base subject only; a message whose decoded subject differs from its
    base subject beyond case was shortened."""
    m = node.message
    if m is None:
        return False
    return " ".join(m.fields.subject_text.split()) != " ".join(
        m.fields.base_subject.casefold().split())
