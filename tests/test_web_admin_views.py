"""The web admin's message trace, hourly history and checks pages, in process like
test_web_admin."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
