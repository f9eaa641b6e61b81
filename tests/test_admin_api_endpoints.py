"""The admin JSON API (web/api.py) in process: the Starlette app over a real SQLite store,
driven by httpx through ASGI (tests/test_admin_api.py runs it in the real server over TLS).
Auth and scopes (RFC 6750 §3), throttling, every endpoint's success and error paths, the body
limit, the audit log and the OpenAPI description."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.routing import Mount, Route

from mailhouse.config import Config, load_config
from mailhouse.errors import MailError
from mailhouse.net.tls import ensure_self_signed
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.acme_files import RenewalState, save_state
from mailhouse.service.api_tokens import ApiTokens
from mailhouse.service.doctor import CheckResult, Doctor, Status
from mailhouse.service.throttle import LoginThrottle
from mailhouse.store import open_store
from mailhouse.store.base import QueueRequest, Store, TraceEvent
from mailhouse.store.memory import MemoryStore
from mailhouse.web import api
from mailhouse.web.admin import AdminContext, build_app
from mailhouse.web.api_http import MAX_API_BODY, ApiError, Guard
from mailhouse.web.api_openapi import openapi_path
from mailhouse.web.health import Check

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALL = ("read", "accounts", "queue", "audit")
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@dataclass
class Harness:
    config: Config
    store: Store
    context: AdminContext
    client: httpx.AsyncClient

    async def token(self, *scopes: str, days: int | None = None) -> str:
        new = await ApiTokens(self.store).create("ann", scopes or ALL, actor="cli:root",
                                                 days=days)
        return new.secret

    def other_client(self, address: str) -> httpx.AsyncClient:
        return client_for(self.context, address)


def client_for(context: AdminContext, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build_app(context, (api.routes,)),
                                    client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="https://admin.test/api/v1")


async def ready() -> Mapping[str, Check]:
    return {}


@asynccontextmanager
async def harness(tmp_path: Path, limit: int = 5) -> AsyncIterator[Harness]:
    path = tmp_path / "mailhouse.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n')
    config = load_config(path)
    store = open_store(config.data_dir)
    await store.open()
    try:
        await store.add_admin("ann", "h", 1.0)
        context = AdminContext(config, store, Passwords(CHEAP), LoginThrottle(limit, 60.0),
                               ready)
        async with client_for(context, "192.0.2.7") as client:
            yield Harness(config, store, context, client)
    finally:
        await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run(tmp_path: Path, scenario: object, **kw: int) -> None:
    async def go() -> None:
        async with harness(tmp_path, **kw) as h:
            await scenario(h)  # type: ignore[operator]

    asyncio.run(go())


# --- auth -------------------------------------------------------------------------------------
def test_no_or_bad_credentials_are_401_and_a_missing_scope_403(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        bare = await h.client.get("/domains")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == 'Bearer realm="mailhouse admin API"'
        assert bare.json()["error"] == "unauthorized"
        basic = await h.client.get("/domains", headers={"Authorization": "Basic YTpi"})
        assert basic.status_code == 401
        for wrong in ("mh_" + "A" * 43, "nonsense", "mh_short"):
            r = await h.client.get("/domains", headers=bearer(wrong))
            assert r.status_code == 401 and r.json()["error"] == "invalid_token"
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
        reader = await h.token("read")
        ok = await h.client.get("/domains", headers={"Authorization": f"bearer  {reader}"})
        assert ok.status_code == 200 and ok.json() == []  # the scheme is case-insensitive
        denied = await h.client.post("/domains", json={"name": "example.org"},
                                     headers=bearer(reader))
        assert denied.status_code == 403 and denied.json()["error"] == "insufficient_scope"
        assert 'scope="accounts"' in denied.headers["www-authenticate"]
        assert (await h.client.get("/audit", headers=bearer(reader))).status_code == 403
        revoked = await h.token("read")
        newest = (await ApiTokens(h.store).list())[-1]
        await ApiTokens(h.store).revoke(newest.id, actor="cli:root")
        assert (await h.client.get("/domains", headers=bearer(revoked))).status_code == 401

    run(tmp_path, scenario, limit=20)


def test_expired_tokens_are_refused(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        token = await h.token("read", days=1)
        assert (await h.client.get("/domains", headers=bearer(token))).status_code == 200
        h.context.clock = lambda: 4e9  # long after the day is over
        async with h.other_client("192.0.2.7") as later:
            r = await later.get("/domains", headers=bearer(token))
            assert r.status_code == 401 and r.json()["error"] == "invalid_token"

    run(tmp_path, scenario)


def test_failed_token_checks_are_throttled_per_client_address(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        good = await h.token("read")
        for _ in range(3):
            r = await h.client.get("/domains", headers=bearer("mh_" + "B" * 43))
            assert r.status_code == 401
        locked = await h.client.get("/domains", headers=bearer(good))
        assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
        assert locked.json()["error"] == "throttled"
        async with h.other_client("198.51.100.9") as other:
            assert (await other.get("/domains", headers=bearer(good))).status_code == 200

    run(tmp_path, scenario, limit=3)


# --- domains, users, aliases ------------------------------------------------------------------
def test_domains(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token())
        added = await h.client.post("/domains", json={"name": "Example.ORG"}, headers=auth)
        assert added.status_code == 201, added.text
        body = added.json()
        assert body["name"] == "example.org" and body["users"] == 0
        assert "example.org. IN MX 10 mx.example.test." in body["records"]
        assert any("._domainkey.example.org." in line for line in body["records"])
        again = await h.client.post("/domains", json={"name": "example.org"}, headers=auth)
        assert again.status_code == 409 and again.json()["error"] == "exists"
        bad = await h.client.post("/domains", json={"name": "not a domain"}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_input"
        assert (await h.client.post("/domains", json={"name": 5}, headers=auth)).status_code \
            == 400
        listed = await h.client.get("/domains", headers=auth)
        assert listed.json() == [{"name": "example.org", "users": 0, "aliases": 0,
                                  "records": body["records"]}]
        one = await h.client.get("/domains/example.org", headers=auth)
        assert one.status_code == 200 and one.json()["records"] == body["records"]
        assert (await h.client.get("/domains/example.net", headers=auth)).status_code == 404
        keys = await h.client.get("/dkim/example.org", headers=auth)
        assert keys.status_code == 200 and keys.json()["keys"]
        key = keys.json()["keys"][0]
        assert key["name"].endswith("._domainkey.example.org") and "p=" in key["txt"]
        assert (await h.client.get("/dkim/example.net", headers=auth)).status_code == 404
        await h.client.post("/users", json={"address": "u@example.org",
                                            "password": "a long password"}, headers=auth)
        busy = await h.client.delete("/domains/example.org", headers=auth)
        assert busy.status_code == 409 and "remove them first" in busy.json()["detail"]
        await h.client.delete("/users/u@example.org", headers=auth)
        assert (await h.client.delete("/domains/example.org", headers=auth)).status_code == 204
        assert (await h.client.delete("/domains/example.org", headers=auth)).status_code == 404

    run(tmp_path, scenario)


def test_users_and_aliases(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token())
        await h.client.post("/domains", json={"name": "example.org"}, headers=auth)
        made = await h.client.post("/users", json={"address": "Ann@example.org",
                                                   "password": "a long password",
                                                   "quota": 1000000}, headers=auth)
        assert made.status_code == 201, made.text
        assert made.json() == {"address": "ann@example.org", "mailboxes": 6, "messages": 0,
                               "used": 0, "quota": 1000000}
        twice = await h.client.post("/users", json={"address": "ann@example.org",
                                                    "password": "a long password"},
                                    headers=auth)
        assert twice.status_code == 409
        elsewhere = await h.client.post("/users", json={"address": "x@example.net",
                                                        "password": "a long password"},
                                        headers=auth)
        assert elsewhere.status_code == 409 and "not one of our domains" in elsewhere.text
        short = await h.client.post("/users", json={"address": "b@example.org",
                                                    "password": ""}, headers=auth)
        assert short.status_code == 400
        assert [u["address"] for u in (await h.client.get("/users", headers=auth)).json()] \
            == ["ann@example.org"]
        assert (await h.client.get("/users/ann@example.org", headers=auth)).json()["quota"] \
            == 1000000
        assert (await h.client.get("/users/no@example.org", headers=auth)).status_code == 404
        pw = await h.client.put("/users/ann@example.org/password",
                                json={"password": "another long one"}, headers=auth)
        assert pw.status_code == 204
        assert (await h.client.put("/users/no@example.org/password",
                                   json={"password": "another long one"},
                                   headers=auth)).status_code == 404
        quota = await h.client.put("/users/ann@example.org/quota", json={"quota": None},
                                   headers=auth)
        assert quota.status_code == 200 and quota.json()["quota"] is None
        assert (await h.client.put("/users/ann@example.org/quota", json={},
                                   headers=auth)).status_code == 400
        assert (await h.client.put("/users/ann@example.org/quota", json={"quota": -1},
                                   headers=auth)).status_code == 400
        alias = await h.client.post("/aliases", json={"alias": "info@example.org",
                                                      "targets": ["ann@example.org"]},
                                    headers=auth)
        assert alias.json() == {"alias": "info@example.org", "targets": ["ann@example.org"]}
        assert (await h.client.post("/aliases", json={"alias": "x@example.org",
                                                      "targets": [1]},
                                    headers=auth)).status_code == 400
        assert (await h.client.get("/aliases", headers=auth)).json() == [alias.json()]
        gone = await h.client.delete("/users/ann@example.org", headers=auth)
        assert gone.json() == {"removed": "ann@example.org", "aliases_changed": [],
                               "aliases_removed": ["info@example.org"]}
        assert (await h.client.delete("/aliases/info@example.org",
                                      headers=auth)).status_code == 404
        audit = await h.client.get("/audit", params={"limit": 50}, headers=auth)
        actions = [(e["actor"], e["action"]) for e in audit.json()]
        assert ("operator:ann", "user.add") in actions
        assert ("operator:ann", "user.password") in actions
        assert ("operator:ann", "alias.set") in actions
        assert ("operator:ann", "domain.add") in actions
        assert (await h.client.get("/audit", params={"limit": "x"},
                                   headers=auth)).status_code == 400
        assert (await h.client.get("/audit", params={"limit": "0"},
                                   headers=auth)).status_code == 400
        assert (await h.client.get("/audit", params={"limit": "\u00b2"},
                                   headers=auth)).status_code == 400

    run(tmp_path, scenario)


# --- the queue --------------------------------------------------------------------------------
def test_the_queue(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        spool = h.store.new_spool()
        await spool.write(MESSAGE)
        await h.store.deliver(spool, [], queue=QueueRequest(
            "a@example.org", ("b@remote.test",), not_before=4e9))
        (queued,) = await h.store.queue_list()
        auth = bearer(await h.token())
        reader = bearer(await h.token("read"))
        listed = (await h.client.get("/queue", headers=reader)).json()
        assert [m["id"] for m in listed] == [queued.id]
        assert listed[0]["recipients"][0]["status"] == "pending"
        shown = await h.client.get(f"/queue/{queued.id}", headers=reader)
        assert shown.json()["sender"] == "a@example.org"
        assert (await h.client.get(f"/queue/{queued.id}/content",
                                   headers=reader)).status_code == 403
        content = await h.client.get(f"/queue/{queued.id}/content", headers=auth)
        assert content.status_code == 200 and content.content == MESSAGE
        assert content.headers["content-type"] == "message/rfc822"
        assert (await h.client.post(f"/queue/{queued.id}/retry", headers=auth)).json() == {
            "rescheduled": 1}
        assert (await h.client.post("/queue/flush", headers=auth)).json() == {"rescheduled": 1}
        assert shown.json()["bounce_requested"] is False
        assert (await h.client.post(f"/queue/{queued.id}/bounce",
                                    headers=reader)).status_code == 403
        bounced = await h.client.post(f"/queue/{queued.id}/bounce", headers=auth)
        assert (bounced.status_code, bounced.json()) == (202, {"bouncing": 1})
        shown = await h.client.get(f"/queue/{queued.id}", headers=reader)
        assert shown.json()["bounce_requested"] is True  # the queue worker carries it out
        assert (await h.client.delete(f"/queue/{queued.id}", headers=auth)).status_code == 204
        for method, path in (("GET", f"/queue/{queued.id}"),
                             ("GET", f"/queue/{queued.id}/content"),
                             ("POST", f"/queue/{queued.id}/retry"),
                             ("POST", f"/queue/{queued.id}/bounce"),
                             ("DELETE", f"/queue/{queued.id}")):
            r = await h.client.request(method, path, headers=auth)
            assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path)
        assert (await h.client.get("/queue/x", headers=auth)).status_code == 404
        actions = [e.action for e in await h.store.list_audit(10)]
        assert {"queue.retry", "queue.flush", "queue.bounce", "queue.delete"} <= set(actions)
        # The operator's actions are steps of the message's trace, found by its queue id.
        found = await h.client.get("/trace", params={"q": str(queued.id)}, headers=reader)
        assert found.status_code == 200
        (trace,) = found.json()
        assert [step["kind"] for step in trace["steps"]][-3:] == ["retry", "bounce", "delete"]
        assert trace["steps"][-1]["detail"] == {"actor": "operator:ann"}
        one = await h.client.get(f"/trace/{trace['trace']}", headers=reader)
        assert one.json() == trace
        assert (await h.client.get("/trace/nothing", headers=reader)).status_code == 404
        for bad in ({"q": ""}, {"q": "a@b.example", "limit": "0"}, {"q": "x", "limit": "y"},
                    {"q": "x", "limit": "\u00b2"}):  # a Unicode digit int() refuses
            r = await h.client.get("/trace", params=bad, headers=reader)
            assert r.status_code == 400 and r.json()["error"] == "invalid_input", bad

    run(tmp_path, scenario)


# --- certificate, doctor ----------------------------------------------------------------------
def test_the_certificate(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token("read"))
        assert (await h.client.get("/certificate", headers=auth)).status_code == 404
        ensure_self_signed(h.config.data_dir / "tls", h.config.hostname)
        cert = (await h.client.get("/certificate", headers=auth)).json()
        assert cert["self_signed"] is True and "mx.example.test" in cert["names"]
        assert cert["days_left"] > 30 and cert["not_after"].endswith("Z")
        assert cert["subject"] == cert["issuer"]
        h.context.certificate = lambda: issued(tmp_path)  # what App.tls_files says now
        cert = (await h.client.get("/certificate", headers=auth)).json()
        assert cert["self_signed"] is False and cert["names"] == ["mx.example.test"]
        assert cert["issuer"] == "CN=Test CA" and cert["days_left"] in (9, 10)
        assert cert["acme"] is False and cert["renewal"] is None
        # ACME on, its renewal failing: the API says so (issue 9 §5: visible in the admin).
        save_state(h.config.data_dir, RenewalState(last_attempt=1e9, last_error="timeout",
                                                   next_check=1e9 + 60, failures=2))
        h.context.config = replace(h.config, acme=replace(h.config.acme, enabled=True))
        cert = (await h.client.get("/certificate", headers=auth)).json()
        assert cert["acme"] is True
        assert cert["renewal"]["failing"] is True and cert["renewal"]["failures"] == 2
        assert cert["renewal"]["last_error"] == "timeout"

    run(tmp_path, scenario)


def test_hourly_stats(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token("read"))
        now = h.context.clock()
        await h.store.record_events([TraceEvent(now, "T1", "delivered"),
                                     TraceEvent(now, "T2", "deferred")])
        hours = (await h.client.get("/stats/hourly", headers=auth)).json()
        assert len(hours) == 24 and hours[-1]["delivered"] == 1 and hours[-1]["deferred"] == 1
        assert hours[0]["hour"].endswith("Z") and hours[0]["delivered"] == 0

    run(tmp_path, scenario)


def issued(directory: Path) -> Path:
    """A certificate for mx.example.test from a CA of its own, valid ten days."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")])
    cert = (x509.CertificateBuilder().subject_name(name)
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=10, hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.example.test")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    path = directory / "issued.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_the_doctor_runs_bounded_in_time(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async def results(self: Doctor) -> list[CheckResult]:
        return [CheckResult(f"mx {d}", Status.OK, "mx.example.test")
                for d in self.setup.domains]

    async def slow(self: Doctor) -> list[CheckResult]:
        await asyncio.sleep(5)
        return []

    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token("read"))
        await h.store.add_domain("example.org")
        monkeypatch.setattr(Doctor, "run", results)
        r = await h.client.get("/doctor", headers=auth)
        assert r.status_code == 200
        assert r.json() == [{"name": "mx example.org", "status": "ok",
                             "found": "mx.example.test", "why_it_matters": "", "fix": ""}]
        assert (await h.client.get("/doctor", params={"domain": "example.net"},
                                   headers=auth)).status_code == 404
        monkeypatch.setattr(Doctor, "run", slow)
        monkeypatch.setattr(api, "DOCTOR_TIMEOUT", 0.05)
        late = await h.client.get("/doctor", headers=auth)
        assert late.status_code == 504 and late.json()["error"] == "timeout"

    run(tmp_path, scenario)


# --- bodies, methods, paths -------------------------------------------------------------------
def test_bodies_are_bounded_json_objects(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token())
        big = b'{"name": "' + b"a" * MAX_API_BODY + b'"}'
        r = await h.client.post("/domains", content=big,
                                headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(MAX_API_BODY // 1024 + 2):
                yield b" " * 1024

        r = await h.client.post("/domains", content=chunks(),
                                headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 413
        exact = b'{"name": "example.org"}'.ljust(MAX_API_BODY)
        r = await h.client.post("/domains", content=exact,
                                headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 201  # at the limit is still accepted
        for content, media, status in ((b'{"name": "x.org"}', "text/plain", 415),
                                       (b"{not json", "application/json", 400),
                                       (b'["x.org"]', "application/json", 400),
                                       (b"\xff", "application/json", 400)):
            r = await h.client.post("/domains", content=content,
                                    headers={**auth, "Content-Type": media})
            assert r.status_code == status, (content, r.text)

    run(tmp_path, scenario)


def test_wrong_methods_and_unknown_paths_answer_json(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        r = await h.client.patch("/domains")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
        assert r.json()["error"] == "method_not_allowed"
        r = await h.client.get("/nothing/here")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await h.client.head("/domains", headers=bearer(await h.token("read")))
        assert r.status_code == 200

    run(tmp_path, scenario)


def test_a_failing_store_is_503_and_not_counted_against_the_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise MailError()

    async def scenario(h: Harness) -> None:
        auth = bearer(await h.token("read"))
        monkeypatch.setattr(Accounts, "list_domains", broken)
        r = await h.client.get("/domains", headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "storage_error"
        assert "retry-after" in r.headers
        monkeypatch.setattr(ApiTokens, "authenticate", broken)
        r = await h.client.get("/users", headers=auth)
        assert r.status_code == 503  # and the throttle records no failure:
        assert h.context.login_throttle.check("192.0.2.7", "x@example.org")
        assert h.context.login_throttle.in_flight == 0

    run(tmp_path, scenario, limit=1)  # one recorded failure would lock the address


# --- OpenAPI ----------------------------------------------------------------------------------
def concrete(path: str) -> str:
    return path.replace("{domain}", "example.org").replace("{address}", "u@example.org").replace(
        "{alias}", "a@example.org").replace("{id}", "999").replace("{id:int}", "999")


async def served(h: Harness) -> set[tuple[str, str]]:
    """What the app answers, asked of it: PATCH (no endpoint takes it) gets each route's
    405 with `Allow`."""
    (mount,) = api.routes(h.context)
    assert isinstance(mount, Mount)
    out = set()
    for route in mount.routes:
        assert isinstance(route, Route)
        if route.path == "/openapi.json":
            continue
        r = await h.client.patch(concrete(route.path))
        assert r.status_code == 405, route.path
        out |= {(m.strip().lower(), openapi_path(route.path))
                for m in r.headers["allow"].split(",") if m.strip() != "HEAD"}
    return out


def test_the_openapi_description_matches_the_routes(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        r = await h.client.get("/openapi.json")  # no token needed: it holds no secret
        assert r.status_code == 200
        doc = r.json()
        assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "/api/v1"}]
        described = {(method, path) for path, ops in doc["paths"].items() for method in ops}
        assert described == await served(h)
        for path, ops in doc["paths"].items():
            for operation in ops.values():
                assert operation["x-scope"] in ALL
                names = {p["name"] for p in operation.get("parameters", ())
                         if p["in"] == "path"}
                assert names == {part[1:-1] for part in path.split("/")
                                 if part.startswith("{")}
        # Every described operation exists: each answers something other than 404/405.
        auth = bearer(await h.token())
        for path, ops in doc["paths"].items():
            for method in ops:
                if method == "get" and path != "/doctor":  # the doctor: its own test
                    r = await h.client.get(concrete(path), headers=auth)
                    assert r.status_code != 405, path
                    assert r.status_code != 404 or r.json()["detail"] != "no such endpoint"

    run(tmp_path, scenario)


# --- the Authorization header, whatever it holds ----------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=80))
def test_any_authorization_header_is_a_clean_401(value: str) -> None:
    async def check() -> None:
        store = MemoryStore()
        await store.open()
        await store.add_admin("ann", "h", 1.0)
        await ApiTokens(store).create("ann", ["read"], actor="cli:root")
        guard = Guard(ApiTokens(store), LoginThrottle(1000, 60.0))
        request = Request({"type": "http", "method": "GET", "path": "/api/v1/domains",
                           "headers": [(b"authorization", value.encode("latin-1"))],
                           "client": ("192.0.2.1", 1)})
        with pytest.raises(ApiError) as refused:
            await guard.token(request)
        assert refused.value.status == 401
        assert refused.value.headers["WWW-Authenticate"].startswith("Bearer realm=")

    asyncio.run(check())
