"""Log lines no peer can forge: escaping in the one formatter every process uses."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable

import pytest

from mailhouse.logfmt import JsonFormatter, SafeFormatter, Trusted, escape
from mailhouse.supervisor import configure_logging

FORGERIES = [
    "x user=admin",  # a fake field
    'a"b',
    "line\nfake=1",
    "cr\rx",
    "nel\x85x",  # U+0085 NEXT LINE
    "ls\u2028x",  # LINE SEPARATOR
    "ps\u2029x",
    "c1\x9bx",  # a C1 control (CSI)
    "bidi\u202ex",  # RIGHT-TO-LEFT OVERRIDE
    "nul\x00x",
    "tab\tx",
    "esc\x1b[31mred",
    "",
    "back\\slash",
]


@pytest.mark.parametrize("value", FORGERIES)
def test_escaped_value_is_one_field(value: str) -> None:
    out = escape(value)
    assert out.startswith('"') and out.endswith('"')
    inner = out[1:-1]
    # No unescaped quote inside: the field ends where the quotes end.
    assert '"' not in inner.replace('\\"', "").replace("\\\\", "")
    assert all(c.isprintable() for c in out)


def test_safe_values_stay_readable() -> None:
    for value in ("alice@example.test", "127.0.0.1:2525", "[::1]:25", "<>", "TLSv1.3",
                  "bücher@例え.jp", "1A2B3C"):
        assert escape(value) == value


def _format(msg: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("mailhouse.test.logfmt")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if exc:
        try:
            raise ValueError("bad\n2026-12-04 INFO mailhouse event=auth.login user=root")
        except ValueError:
            logger.exception(msg, *args)
    else:
        logger.info(msg, *args)
    return stream.getvalue()


def test_fields_cannot_be_forged() -> None:
    line = _format("event=smtp.rcpt_rejected peer=%s rcpt=<%s> count=%d size=%.1f",
                   "127.0.0.1:25", '"x y"@example.test user=admin\u2028FAKE', 3, 1.5)
    assert line.count("\n") == 1  # one record, one line
    assert "user=admin" in line  # present, but inside the quoted value
    assert 'rcpt=<"\\"x y\\"@example.test user=admin\\u2028FAKE">' in line
    assert "count=3 size=1.5" in line


def test_repr_args_stay_on_one_line() -> None:
    line = _format("event=x reason=%r", "a\u2028b\x85c")
    assert line.count("\n") == 1
    assert "\\u2028" in line and "\\x85" in line


def test_traceback_lines_cannot_pass_for_records() -> None:
    text = _format("event=x.failed peer=%s", "1.2.3.4:5", exc=True)
    lines = text.splitlines()
    assert lines[0] == "ERROR event=x.failed peer=1.2.3.4:5"
    assert all(line.startswith("    ") for line in lines[1:])


def test_trusted_text_built_by_the_server_is_written_as_is() -> None:
    assert _format("event=x%s pid=%d", Trusted(" worker=1"), 5) == "INFO event=x worker=1 pid=5\n"


def _json_lines(emit: Callable[[logging.Logger], None]) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("queue"))
    logger = logging.getLogger("mailhouse.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("value", FORGERIES)
def test_json_lines_hold_one_record_and_their_fields(value: str) -> None:
    [doc] = _json_lines(lambda log: log.warning("event=smtp.login user=%s result=%s", value,
                                                "FAILED"))
    assert doc["level"] == "WARNING" and doc["role"] == "queue"
    assert doc["logger"] == "mailhouse.test.json" and str(doc["ts"]).endswith("Z")
    assert doc["event"] == "smtp.login" and doc["result"] == "FAILED"
    assert doc["user"] == escape(value)  # the text format's one rule for peer values
    assert "admin" not in {k for k in doc if k not in ("msg", "user")}  # no forged field


def test_json_tracebacks_stay_in_their_record() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("bad\nfake=1")
        except ValueError:
            log.exception("event=task.failed peer=%s", "1.2.3.4")

    [doc] = _json_lines(emit)
    assert doc["event"] == "task.failed" and "ValueError" in str(doc["trace"])
    assert "\n" not in str(doc["msg"])


def test_auto_is_text_on_a_terminal_and_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    for tty, expected in ((True, SafeFormatter), (False, JsonFormatter)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers.clear()
        try:
            configure_logging("info", "main", "auto")
            assert type(root.handlers[-1].formatter) is expected
        finally:
            root.handlers[:] = saved
