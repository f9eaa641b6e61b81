"""The web admin's message trace, hourly history, checks and API tokens, in process like
test_web_admin."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mailhouse.service.api_tokens import ApiTokens
from mailhouse.store.base import TraceEvent
from tests.test_web_admin import Admin, run

STEPS = [
    TraceEvent(1.7e9, "2C7HQ8K4M9", "received", sender="alice@example.test",
               recipient="bob@remote.test", message_id="<1@example.test>",
               detail=json.dumps({"protocol": "SUBMISSION", "client": "203.0.113.5"})),
    TraceEvent(1.7e9 + 1, "2C7HQ8K4M9", "queued", sender="alice@example.test",
               recipient="bob@remote.test", queue_id=7),
    TraceEvent(1.7e9 + 2, "2C7HQ8K4M9", "deferred", sender="alice@example.test",
               recipient="bob@remote.test", queue_id=7,
               detail=json.dumps({"reply": "451 4.7.1 <try later>", "host": "mx.remote.test"})),
]


def test_trace_page_finds_and_shows_every_step(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        await admin.store.record_events(STEPS)
        empty = await admin.client.get("/trace")
        assert empty.status_code == 200 and 'id="trace-search"' in empty.text
        assert 'href="/trace"' in empty.text  # in the menu
        for query in ("bob@remote.test", "<1@example.test>", "7", "2C7HQ8K4M9",
                      "2c7hq8k4m9"):
            found = await admin.client.get("/trace", params={"q": query})
            assert found.status_code == 200, query
            assert found.text.count('class="badge') >= 4, query
            for kind in ("received", "queued", "deferred"):
                assert f">{kind}</span>" in found.text, (query, kind)
            assert 'href="/queue/7"' in found.text
            # peer text is escaped, never markup
            assert "&lt;try later&gt;" in found.text and "<try later>" not in found.text
        one = await admin.client.get("/trace/2C7HQ8K4M9")
        assert one.status_code == 200 and "&lt;1@example.test&gt;" in one.text
        assert (await admin.client.get("/trace/NOPE")).status_code == 404
        nothing = await admin.client.get("/trace", params={"q": "nobody@example.test"})
        assert "Nothing found" in nothing.text
        bad = await admin.client.get("/trace", params={"q": "x" * 5000})
        assert bad.status_code == 200  # clipped to the field limit, answered
        admin.client.cookies.clear()
        assert (await admin.client.get("/trace")).status_code in (302, 303)  # login first
    run(tmp_path, test)


def test_dashboard_shows_the_last_day_per_hour(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        now = admin.context.clock()
        await admin.store.record_events(
            [TraceEvent(now, f"T{n}", "bounced") for n in range(3)])
        page = await admin.client.get("/")
        assert page.status_code == 200 and 'id="hourly"' in page.text
        assert '<td class="num bad">3</td>' in page.text  # this hour's bounces, marked
        assert 'id="renewal' not in page.text  # ACME is off here
    run(tmp_path, test)


def test_checks_page_runs_every_check_of_the_doctor(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        await admin.post("/domains/add", domain="example.test")
        page = await admin.client.get("/checks")
        assert page.status_code == 200 and 'href="/checks"' in page.text
        rows = re.findall(r'class="badge (\w+)">\w+</span>\s*<strong class="check-name">'
                          r'([^<]+)</strong>', page.text)
        statuses = {name: status for status, name in rows}
        assert statuses.get("mx example.test") == "ok", statuses  # the domain's DNS
        assert {"disk", "certificate"} <= set(statuses), statuses  # and the host's
    run(tmp_path, test)


def test_api_tokens_made_and_revoked_in_the_browser(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        made = await admin.post("/tokens/add", scope_read="on", scope_queue="on",
                                label="deploy", days="30")
        assert made.status_code == 303
        page = await admin.client.get("/operators")
        secret = re.search(r"(mh_[A-Za-z0-9_-]{43})", page.text)
        assert secret is not None, page.text  # shown once, in the notice
        api = ApiTokens(admin.store, clock=admin.context.clock)
        token = await api.authenticate(secret.group(1))
        assert token is not None and token.admin == "ann"
        assert token.scopes == ("read", "queue") and token.label == "deploy"
        again = await admin.client.get("/operators")
        assert secret.group(1) not in again.text and 'id="tokens"' in again.text
        for bad in ({"label": "x"}, {"scope_read": "on", "days": "\u00b2"},
                    {"scope_read": "on", "days": "0"}):
            await admin.post("/tokens/add", **bad)
            assert 'class="notice error"' in (await admin.client.get("/operators")).text, bad
        assert (await admin.post("/tokens/revoke", id=str(token.id))).status_code == 303
        assert f"Token {token.id} of ann revoked" in (await admin.client.get("/operators")).text
        assert await api.authenticate(secret.group(1)) is None
        await admin.post("/tokens/revoke", id="nope")
        assert "no such token" in (await admin.client.get("/operators")).text
        actions = [e.action for e in await admin.store.list_audit(20)]
        assert "token.add" in actions and "token.revoke" in actions
    run(tmp_path, test)
