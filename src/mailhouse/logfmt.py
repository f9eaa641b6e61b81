"""Log lines no peer can forge (issue 7, finding 7).

Every log line is `key=value` pairs after a fixed prefix, and many values come from peers:
addresses (quoted local parts may hold spaces, `=` and quotes; SMTPUTF8 ones any Unicode), HELO
names, user names. Written raw, a value such as `x user=admin` adds a field, and a line
separator (CR, LF, U+0085, U+2028, U+2029, C1 controls) starts a fake line.

So the formatter escapes at the one place every line passes through, not at each call: every
argument of a record that is not a number is rendered through `escape()`, the message template
(the server's own text) stays as written. A value made only of "safe" characters (printable
Unicode included) is left as it is, so ordinary lines read as before; any other value is
written in double quotes with `"` and `\\` escaped and every character that is not printable
(Python's `str.isprintable`: controls, format characters such as bidi overrides, line and
paragraph separators, unassigned code points) as `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`.
Traceback text is indented, so no line of it can pass for the start of a record.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

# Left unquoted: what addresses, host names, IPs, ids and event values are made of.
_SAFE = re.compile(r"[A-Za-z0-9._@:/+\-\[\]<>,()#*!?~^%&$|{}']*")
_TRACE_INDENT = "    "


def _safe_unicode(value: str) -> bool:
    """Printable non-ASCII (an SMTPUTF8 address, an IDN) stays readable; separators and
    controls, which `isprintable()` rejects, do not."""
    return value.isprintable() and all(ord(c) > 0x7F or _SAFE.fullmatch(c) for c in value)


def _escape_char(char: str) -> str:
    if char == '"':
        return '\\"'
    if char == "\\":
        return "\\\\"
    if char.isprintable() and char != "\t":
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(value: str) -> str:
    """`value` as one unforgeable log field value: as is when every character is safe, else
    double-quoted with escapes (an empty value is `""`)."""
    if value and (_SAFE.fullmatch(value) or _safe_unicode(value)):
        return value
    return '"' + "".join(_escape_char(c) for c in value) + '"'


def _escape_repr(text: str) -> str:
    """A `%r` value: already delimited by its quotes; only make sure it stays on one line and
    holds nothing unprintable."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


class _Escaped:
    """Stands in for one argument: `%s` gets the escaped str(), `%r` the escaped repr()."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __str__(self) -> str:
        return escape(str(self._value))

    def __repr__(self) -> str:
        return _escape_repr(repr(self._value))


class Trusted(str):
    """Text the server built itself from its own constants and numbers (a `worker=2` label):
    written as it is, so one argument may carry several fields."""

    __slots__ = ()


def _wrap(value: object) -> object:
    # Numbers keep their type so %d, %.1f and %x keep working; they cannot carry peer text.
    if value is None or isinstance(value, int | float | Trusted):
        return value
    return _Escaped(value)


class SafeFormatter(logging.Formatter):
    """A Formatter that escapes every non-numeric argument and indents tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if args:
            safe: Any
            if isinstance(args, Mapping):
                safe = {key: _wrap(value) for key, value in args.items()}
            else:
                safe = tuple(_wrap(value) for value in args)
            record = logging.makeLogRecord({**record.__dict__, "args": safe})
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        return "\n".join(_TRACE_INDENT + _escape_repr(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(_TRACE_INDENT + _escape_repr(line)
                         for line in stack_info.splitlines())


# A field of a rendered line: key=value, the value bare or double-quoted with escapes.
_FIELD = re.compile(r'(?:^| )([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^ ]*)')


class JsonFormatter(SafeFormatter):
    """One JSON object a line, for log collectors: `ts` (UTC, ISO 8601), `level`, `logger`,
    `role`, then the line's own key=value fields (as escaped for the text format: one rule
    for what peers can put in a log), and `msg`, the whole text line. json.dumps escapes what
    remains, so no value can break the line."""

    def __init__(self, role: str) -> None:
        super().__init__("%(message)s")
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        message, _, trace = text.partition("\n")
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "role": self._role}
        for key, value in _FIELD.findall(message):
            if key not in doc:
                doc[key] = value
        doc["msg"] = message
        if trace:
            doc["trace"] = trace
        return json.dumps(doc, ensure_ascii=False)
