"""Property tests of what the web admin reads from the network before anyone is logged in:
form bodies, the Origin/Referer pair, form tokens and the setup secret. Whatever arrives, the
answer is a value or `Refused` (a page with a status), never another exception."""

from __future__ import annotations

import asyncio

from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request

from mailhouse.web.pages import MAX_FORM_BYTES, Refused, check_origin
from mailhouse.web.sessions import Bootstrap, FormTokens

HOST = "admin.test:8443"


def request(headers: dict[str, str], body: bytes = b"") -> Request:
    sent = [False]

    async def receive() -> dict[str, object]:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": raw,
             "query_string": b"", "scheme": "https", "server": ("admin.test", 8443)}
    return Request(scope, receive)


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)


@given(origin=st.one_of(st.none(), header_text), referer=st.one_of(st.none(), header_text))
@example(origin=f"https://{HOST}", referer=None)
@example(origin="null", referer=f"https://{HOST}/users")
@example(origin=None, referer=f"https://{HOST}.evil.test/")
@example(origin="HTTPS://Admin.Test:8443", referer=None)
@example(origin=None, referer=f"https://{HOST}@evil.test/")
def test_origin_check_accepts_only_this_listener(origin: str | None,
                                                 referer: str | None) -> None:
    headers = {"host": HOST}
    if origin is not None:
        headers["origin"] = origin
    if referer is not None:
        headers["referer"] = referer
    try:
        check_origin(request(headers))
    except Refused as exc:
        assert exc.status == 403
        return
    # Accepted: the origin that counts is exactly ours.
    if origin is not None and origin != "null":
        assert origin.lower() == f"https://{HOST}"
    else:
        assert referer is not None
        assert referer.lower().startswith(f"https://{HOST}") and \
            referer[len(f"https://{HOST}"):][:1] in ("", "/", "?", "#")


@given(body=st.binary(max_size=600))
@example(body=b"csrf=a&name=%FF")
@example(body=b"a=1&" * 101)
def test_form_bodies_parse_or_are_refused(body: bytes) -> None:
    from mailhouse.web.pages import Kit

    async def parse() -> dict[str, str] | int:
        kit = Kit.__new__(Kit)  # form() needs no state of the kit
        try:
            return await kit.form(request({"host": HOST, "origin": f"https://{HOST}"}, body))
        except Refused as exc:
            return exc.status

    result = asyncio.run(parse())
    assert result in (400, 413) or isinstance(result, dict)
    if isinstance(result, dict):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


def test_a_body_over_the_limit_is_refused_even_without_a_length() -> None:
    from mailhouse.web.pages import Kit

    async def parse() -> int:
        kit = Kit.__new__(Kit)
        try:
            await kit.form(request({"host": HOST, "origin": f"https://{HOST}"},
                                   b"a=" + b"x" * MAX_FORM_BYTES))
        except Refused as exc:
            return exc.status
        return 200

    assert asyncio.run(parse()) == 413


@given(token=st.text(max_size=120))
@example(token="5000.\u00e9")  # non-ASCII: compare_digest raised TypeError (a 500)
@example(token="\u00b2.00")  # isdigit() but not int()
def test_only_issued_form_tokens_are_valid(token: str) -> None:
    tokens = FormTokens(clock=lambda: 5000.0)
    assert tokens.valid(tokens.issue())
    assert not tokens.valid(token) or token == tokens.issue()


@given(offered=st.text(max_size=80))
def test_only_the_armed_secret_opens_setup(offered: str) -> None:
    bootstrap = Bootstrap()
    secret = bootstrap.arm()
    assert bootstrap.take(offered) == (offered == secret)
