"""What must hold of any parsed structure, shared by the example and property tests."""

from __future__ import annotations

from mailhouse.message.structure import MessageStructure, Part, StructureParser


def parse_in_pieces(data: bytes, sizes: list[int]) -> MessageStructure:
    parser = StructureParser()
    pos, k = 0, 0
    while pos < len(data):
        size = sizes[k % len(sizes)]
        parser.feed(data[pos:pos + size])
        pos += size
        k += 1
    return parser.finish()


def check_nesting(structure: MessageStructure, data: bytes) -> None:
    """Offsets inside the message, ordered, children inside their parent's body, no overlap."""
    assert structure.size == len(data)
    root = structure.root
    assert root.header_start == 0
    assert root.body_end == len(data)
    _check_part(root, 0, len(data))


def _check_part(part: Part, low: int, high: int) -> None:
    assert low <= part.header_start <= part.body_start <= part.body_end <= high, part
    assert part.lines >= 0
    assert part.lines <= part.body_end - part.body_start
    if part.message is not None:
        assert part.message.header_start == part.body_start
        assert not part.children
        _check_part(part.message, part.body_start, part.body_end)
        assert part.message.envelope is not None
    previous = part.body_start
    for child in part.children:
        _check_part(child, previous, part.body_end)
        previous = child.body_end
