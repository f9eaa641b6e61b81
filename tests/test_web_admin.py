"""The web admin's security rules over plain HTTP (no browser), the ASGI app in process with a
memory store: the bootstrap secret, login throttling, sessions (cookie attributes, rotation,
idle and absolute timeouts, the bound), CSRF and Origin checks, the security headers; then that
each page's changes reach the store through the services, audited as `operator:<name>`."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from mailhouse.config import Config, load_config
from mailhouse.service.accounts import Passwords
from mailhouse.service.operators import OPERATOR_PASSWORD_MIN, Operators
from mailhouse.service.throttle import LoginThrottle
from mailhouse.store import open_store
from mailhouse.store.base import QueueRequest, Store
from mailhouse.web import pages
from mailhouse.web.admin import AdminContext, arm_bootstrap, build_app
from mailhouse.web.health import Check
from mailhouse.web.sessions import (
    ABSOLUTE_TIMEOUT,
    IDLE_TIMEOUT,
    Bootstrap,
    FormTokens,
    Sessions,
)
from tests.helpers.dns import DnsServer

BASE = "https://admin.test"
ORIGIN = {"origin": BASE}
PASSWORD = "a long enough passphrase"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


async def ready() -> Mapping[str, Check]:
    return {}


@dataclass
class Admin:
    context: AdminContext
    client: httpx.AsyncClient
    store: Store

    async def login(self, name: str = "ann", password: str = PASSWORD) -> httpx.Response:
        token = form_token(await self.client.get("/login"))
        return await self.client.post("/login", data={"csrf": token, "name": name,
                                                      "password": password}, headers=ORIGIN)

    async def csrf(self, path: str = "/") -> str:
        page = await self.client.get(path)
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match, page.text
        return match[1]

    async def post(self, path: str, **data: str) -> httpx.Response:
        return await self.client.post(path, data={"csrf": await self.csrf(), **data},
                                      headers=ORIGIN)


def form_token(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match[1]


def config(tmp_path: Path, nameserver: str) -> Config:
    path = tmp_path / "mailhouse.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
                    '[submission]\nauth_failure_delay = 0.01\nauth_failure_limit = 3\n'
                    f'[dns]\nnameservers = ["{nameserver}"]\n')
    (tmp_path / "data").mkdir(exist_ok=True)
    return load_config(path)


NOW = [1_000_000.0]  # the admin's clock in these tests; a test may move it


def run(tmp_path: Path, test: Callable[[Admin], Awaitable[None]], *,
        operator: bool = True, limit: int = 3) -> None:
    NOW[0] = 1_000_000.0
    async def main(nameserver: str) -> None:
        cfg = config(tmp_path, nameserver)
        store = open_store(cfg.data_dir, "memory")
        await store.open()
        passwords = Passwords(CHEAP)
        context = AdminContext(cfg, store, passwords, LoginThrottle(limit, 300.0), ready,
                               clock=lambda: NOW[0])
        if operator:
            await Operators(store, passwords).add("ann", PASSWORD, actor="test")
        app = build_app(context, (pages.admin_pages,))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                await test(Admin(context, client, store))
        finally:
            await store.close()
    with DnsServer({"example.test": {"MX": [(10, "mx.example.test")]}}) as dns_server:
        asyncio.run(main(dns_server.nameserver))


# --- bootstrap ------------------------------------------------------------------------------

def test_bootstrap_secret_makes_the_first_operator_once(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        notice = await arm_bootstrap(admin.context, ["https://mx.example.test:8443"])
        assert notice is not None
        secret = re.search(r"/setup\?token=(\S+)", notice)
        assert secret
        assert (await admin.client.get("/login")).headers["location"] == "/setup"
        page = await admin.client.get(f"/setup?token={secret[1]}")
        assert page.status_code == 200 and secret[1] in page.text
        fields = {"csrf": form_token(page), "token": secret[1], "name": "ann",
                  "password": "short", "password2": "short"}
        refused = await admin.client.post("/setup", data=fields, headers=ORIGIN)
        assert refused.status_code == 400
        assert f"at least {OPERATOR_PASSWORD_MIN}" in refused.text
        wrong = {**fields, "token": "guess", "password": PASSWORD, "password2": PASSWORD}
        assert (await admin.client.post("/setup", data=wrong, headers=ORIGIN)).status_code == 403
        made = await admin.client.post("/setup", data={**wrong, "token": secret[1]},
                                       headers=ORIGIN)
        assert made.status_code == 303 and made.headers["location"] == "/"
        assert (await admin.client.get("/")).status_code == 200  # logged in
        assert [a.name for a in await admin.store.list_admins()] == ["ann"]
        audit = await admin.store.list_audit(10)
        assert [(e.actor, e.action) for e in audit] == [("setup:bootstrap", "operator.add")]
        # Single use: the same secret again makes nothing, and the page says setup is done.
        again = await admin.client.post("/setup", data={**wrong, "token": secret[1],
                                                         "name": "eve"}, headers=ORIGIN)
        assert again.status_code == 403
        assert (await admin.client.get("/setup")).status_code == 404
        assert len(await admin.store.list_admins()) == 1
    run(tmp_path, test, operator=False)


def test_no_bootstrap_when_an_operator_exists(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        assert await arm_bootstrap(admin.context, ["https://x:1"]) is None
        assert not admin.context.bootstrap.armed
        assert (await admin.client.get("/setup")).status_code == 404
    run(tmp_path, test)


def test_bootstrap_secret_is_compared_whole() -> None:
    bootstrap = Bootstrap()
    assert not bootstrap.take("")
    secret = bootstrap.arm()
    assert not bootstrap.take(secret[:-1]) and not bootstrap.take(secret + "x")
    assert bootstrap.take(secret) and not bootstrap.take(secret)


# --- login, cookies, sessions ----------------------------------------------------------------

def test_login_sets_a_strict_cookie_and_rotates_the_session(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        assert (await admin.client.get("/")).headers["location"] == "/login"
        first = await admin.login()
        assert first.status_code == 303
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(pages.COOKIE + "=")
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes
        assert not any(a.startswith(("domain", "max-age", "expires")) for a in attributes)
        old = admin.client.cookies[pages.COOKIE]
        admin.client.cookies.clear()
        token = form_token(await admin.client.get("/login"))
        admin.client.cookies.set(pages.COOKIE, old, domain="admin.test")  # logged in
        second = await admin.client.post("/login", data={"csrf": token, "name": "ann",
                                                         "password": PASSWORD}, headers=ORIGIN)
        new = admin.client.cookies[pages.COOKIE]
        assert second.status_code == 303 and new != old
        admin.client.cookies.set(pages.COOKIE, old, domain="admin.test")  # replaced: gone
        assert (await admin.client.get("/")).status_code == 303
    run(tmp_path, test)


def test_security_headers_on_every_page(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        for path in ("/login", "/", "/domains", "/users", "/queue", "/audit"):
            page = await admin.client.get(path)
            csp = page.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src" not in csp
            assert "default-src 'none'" in csp  # so no script at all, inline or not
            assert page.headers["referrer-policy"] == "same-origin"
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["x-frame-options"] == "DENY"
            assert "<script" not in page.text
        css = await admin.client.get("/static/admin.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert css.headers["x-content-type-options"] == "nosniff"
        assert (await admin.client.get("/static/../pages.py")).status_code == 404
    run(tmp_path, test)


def test_wrong_password_and_throttling(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        for _ in range(3):
            wrong = await admin.login(password="not the password")
            assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
        locked = await admin.login()  # the right password, refused unchecked
        assert locked.status_code == 429 and "Too many" in locked.text
        assert pages.COOKIE not in admin.client.cookies
    run(tmp_path, test, limit=3)


def test_unknown_operators_share_the_mail_throttle(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        for name in ("x1", "x2", "x3"):  # the client's IP key counts them all
            assert (await admin.login(name=name)).status_code == 401
        assert (await admin.login()).status_code == 429
        # The same throttle the mail logins use: this client is locked there too.
        assert not admin.context.login_throttle.check("127.0.0.1", "alice@example.test")
    run(tmp_path, test, limit=3)


def test_logout_ends_the_session(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        sid = admin.client.cookies[pages.COOKIE]
        out = await admin.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        admin.client.cookies.set(pages.COOKIE, sid, domain="admin.test")
        assert (await admin.client.get("/")).headers["location"] == "/login"
    run(tmp_path, test)


def test_an_idle_session_is_logged_out(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        NOW[0] += IDLE_TIMEOUT - 1
        assert (await admin.client.get("/")).status_code == 200
        NOW[0] += IDLE_TIMEOUT - 1  # active a moment ago: still in
        token = await admin.csrf()
        NOW[0] += IDLE_TIMEOUT + 1
        assert (await admin.client.get("/")).headers["location"] == "/login"
        late = await admin.client.post("/domains/add", data={"csrf": token, "domain": "a.test"},
                                       headers=ORIGIN)
        assert late.status_code == 403 and "not logged in" in late.text
    run(tmp_path, test)


def test_a_session_ends_at_the_absolute_timeout(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        start = NOW[0]
        while (await admin.client.get("/")).status_code == 200:  # active, never idle
            NOW[0] += IDLE_TIMEOUT / 2
            assert NOW[0] - start <= ABSOLUTE_TIMEOUT + IDLE_TIMEOUT
        assert ABSOLUTE_TIMEOUT < NOW[0] - start <= ABSOLUTE_TIMEOUT + IDLE_TIMEOUT / 2
        assert (await admin.client.get("/")).headers["location"] == "/login"
    run(tmp_path, test)


def test_setup_with_a_bad_name_keeps_the_secret(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        notice = await arm_bootstrap(admin.context, ["https://x:1"])
        assert notice is not None
        secret = notice.split("token=")[1].split()[0]
        page = await admin.client.get("/setup")
        fields = {"csrf": form_token(page), "token": secret, "name": "Not A Name!",
                  "password": PASSWORD, "password2": PASSWORD}
        bad = await admin.client.post("/setup", data=fields, headers=ORIGIN)
        assert bad.status_code == 400 and admin.context.bootstrap.armed
        good = await admin.client.post("/setup", data={**fields, "name": "ann"},
                                       headers=ORIGIN)
        assert good.status_code == 303 and not admin.context.bootstrap.armed
    run(tmp_path, test, operator=False)


def test_an_operator_made_elsewhere_voids_the_secret(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await arm_bootstrap(admin.context, ["https://x:1"])
        assert (await admin.client.get("/login")).headers["location"] == "/setup"
        await Operators(admin.store, admin.context.passwords).add("bob", PASSWORD, "cli:root")
        assert (await admin.client.get("/login")).status_code == 200
        assert not admin.context.bootstrap.armed
    run(tmp_path, test, operator=False)


def test_sessions_expire_idle_absolute_and_past_the_bound() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0], idle_timeout=10, absolute_timeout=25,
                        max_sessions=2)
    a = sessions.create("ann")
    now[0] = 9.0
    assert sessions.get(a.id) is a
    now[0] = 18.0
    assert sessions.get(a.id) is a  # idle clock restarted at 9
    now[0] = 26.0
    assert sessions.get(a.id) is None  # absolute timeout, however active
    b = sessions.create("bob")
    now[0] = 36.5
    assert sessions.get(b.id) is None  # idle
    c, d, e = sessions.create("c"), sessions.create("d"), sessions.create("e")
    assert len(sessions) == 2 and sessions.get(c.id) is None  # least recently used dropped
    assert sessions.get(d.id) is d and sessions.get(e.id) is e
    sessions.end_operator("d")
    assert sessions.get(d.id) is None


def test_form_tokens_expire_and_are_bound_to_the_process() -> None:
    now = [1000.0]
    tokens = FormTokens(clock=lambda: now[0], lifetime=60)
    token = tokens.issue()
    assert tokens.valid(token)
    assert not FormTokens(clock=lambda: now[0]).valid(token)  # another key
    assert not tokens.valid(token.replace(".", ".0")) and not tokens.valid("x.y")
    now[0] = 1061.0
    assert not tokens.valid(token)


# --- CSRF and Origin --------------------------------------------------------------------------

def test_posts_need_the_session_csrf_token_and_our_origin(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        token = await admin.csrf()
        cases: list[tuple[dict[str, str], dict[str, str]]] = [
            ({"domain": "a.test"}, ORIGIN),  # no token
            ({"domain": "a.test", "csrf": "forged"}, ORIGIN),  # wrong token
            ({"domain": "a.test", "csrf": token}, {"origin": "https://evil.test"}),
            ({"domain": "a.test", "csrf": token}, {"referer": "https://evil.test/x"}),
            ({"domain": "a.test", "csrf": token}, {}),  # neither Origin nor Referer
            ({"domain": "a.test", "csrf": token}, {"origin": "http://admin.test"}),
        ]
        for data, headers in cases:
            refused = await admin.client.post("/domains/add", data=data, headers=headers)
            assert refused.status_code == 403, (data, headers)
        assert (await admin.store.directory()).domains == frozenset()
        ok = await admin.client.post("/domains/add", data={"domain": "a.test", "csrf": token},
                                     headers={"referer": f"{BASE}/domains"})
        assert ok.status_code == 303
        assert (await admin.store.directory()).domains == {"a.test"}
    run(tmp_path, test)


def test_login_form_needs_its_token_and_our_origin(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        token = form_token(await admin.client.get("/login"))
        fields = {"name": "ann", "password": PASSWORD}
        assert (await admin.client.post("/login", data=fields,
                                         headers=ORIGIN)).status_code == 403
        assert (await admin.client.post("/login", data={**fields, "csrf": token},
                                         headers={"origin": "https://evil.test"})
                ).status_code == 403
        assert pages.COOKIE not in admin.client.cookies
    run(tmp_path, test)


def test_a_form_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        big = await admin.post("/domains/add", domain="x" * pages.MAX_FORM_BYTES)
        assert big.status_code == 413
    run(tmp_path, test)


# --- the pages go through the services --------------------------------------------------------

def test_pages_change_the_store_through_the_services(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        assert (await admin.post("/domains/add", domain="Example.TEST")).headers[
            "location"] == "/domains/example.test"
        assert (await admin.post("/users/add", address="alice@example.test",
                                 password="correct horse")).status_code == 303
        await admin.post("/users/quota", address="alice@example.test", quota="10M")
        await admin.post("/users/password", address="alice@example.test", password="new one!")
        await admin.post("/aliases/add", alias="info@example.test",
                         targets="alice@example.test")
        users = await admin.client.get("/users")
        assert "alice@example.test" in users.text and "10M" in users.text
        assert "info@example.test" in users.text
        bad = await admin.post("/users/add", address="bob@elsewhere.test", password="x")
        assert bad.status_code == 303
        assert "not one of our domains" in (await admin.client.get("/users")).text
        await admin.post("/aliases/remove", alias="info@example.test")
        refused = await admin.post("/users/remove", address="alice@example.test")
        assert "tick the box" in (await admin.client.get("/users")).text and refused
        await admin.post("/users/remove", address="alice@example.test", confirm="yes")
        await admin.post("/domains/remove", domain="example.test")
        audit = [e for e in await admin.store.list_audit(20) if e.actor != "test"]
        assert {e.actor for e in audit} == {"operator:ann"}
        assert [e.action for e in reversed(audit)] == [
            "domain.add", "user.add", "user.quota", "user.password", "alias.set",
            "alias.remove", "user.remove", "domain.remove"]
        page = await admin.client.get("/audit")
        assert "operator:ann" in page.text and "user.quota" in page.text
    run(tmp_path, test)


def test_domain_page_shows_records_and_checks(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        await admin.post("/domains/add", domain="example.test")
        page = await admin.client.get("/domains/example.test")
        assert page.status_code == 200
        assert re.search(r"example\.test\.\s+IN\s+MX\s+10\s+mx\.example\.test\.", page.text)
        assert "._domainkey.example.test." in page.text  # keys made at add
        # The doctor's live checks: the test DNS server publishes the MX only.
        rows = re.findall(r'class="badge (\w+)">\w+</span>\s*<strong class="check-name">'
                          r'([^<]+)</strong>', page.text)
        statuses = {name: status for status, name in rows}
        assert statuses.get("mx example.test") == "ok", statuses
        assert statuses.get("dmarc example.test") == "fail", statuses
        assert (await admin.client.get("/domains/other.test")).status_code == 404
    run(tmp_path, test)


def test_queue_pages_retry_bounce_and_delete(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        ident = await _enqueue(admin.store)
        listing = await admin.client.get("/queue")
        assert "bob@remote.test" in listing.text and f"/queue/{ident}" in listing.text
        detail = await admin.client.get(f"/queue/{ident}")
        assert detail.status_code == 200 and "bob@remote.test" in detail.text
        assert (await admin.post(f"/queue/{ident}/retry")).headers[
            "location"] == f"/queue/{ident}"
        assert (await admin.post("/queue/flush")).status_code == 303
        # Bounce: a confirmation first, then it is asked of the queue worker.
        assert 'id="bounce"' in detail.text and "alice@example.test gets a bounce" in detail.text
        unconfirmed = await admin.post(f"/queue/{ident}/bounce")
        assert unconfirmed.headers["location"] == f"/queue/{ident}"
        refused = await admin.client.get(f"/queue/{ident}")
        assert "Tick the box to confirm" in refused.text
        assert "bounce-requested" not in refused.text
        bounced = await admin.post(f"/queue/{ident}/bounce", confirm="yes")
        assert bounced.headers["location"] == "/queue"
        listing = await admin.client.get("/queue")
        assert "1 pending recipient(s) to be bounced" in listing.text
        assert '<span class="badge">bouncing</span>' in listing.text
        asked = await admin.client.get(f"/queue/{ident}")
        assert 'id="bounce-requested"' in asked.text and 'id="bounce"' not in asked.text
        stored = await admin.store.queue_get(ident)
        assert stored is not None and stored.bounce_requested
        assert (await admin.post(f"/queue/{ident}/delete")).headers["location"] == "/queue"
        assert (await admin.client.get(f"/queue/{ident}")).status_code == 404
        gone = await admin.post(f"/queue/{ident}/bounce", confirm="yes")
        assert gone.headers["location"] == "/queue"
        actions = [e.action for e in reversed(await admin.store.list_audit(10))]
        assert actions[1:] == ["queue.retry", "queue.flush", "queue.bounce", "queue.delete"]
        dashboard = await admin.client.get("/")
        assert 'id="queue-messages">0<' in dashboard.text
    run(tmp_path, test)


async def _enqueue(store: Store) -> int:
    """One message for a remote recipient, as the submission path stores it."""
    spool = store.new_spool()
    await spool.write(b"Subject: hi\r\n\r\nbody\r\n")
    await store.deliver(spool, [], queue=QueueRequest("alice@example.test",
                                                      ("bob@remote.test",)))
    return max(m.id for m in await store.queue_list())


def test_operators_page(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        assert (await admin.post("/operators/add", name="bob", password="short")).status_code \
            == 303
        assert f"at least {OPERATOR_PASSWORD_MIN}" in (await admin.client.get("/operators")).text
        await admin.post("/operators/add", name="bob", password=PASSWORD)
        page = await admin.client.get("/operators")
        assert "bob" in page.text and "ann (you)" in page.text
        # bob logs in elsewhere; ann changes bob's password: bob's session ends.
        ann = admin.client.cookies[pages.COOKIE]
        admin.client.cookies.clear()
        await admin.login("bob")
        bob = admin.client.cookies[pages.COOKIE]
        admin.client.cookies.set(pages.COOKIE, ann, domain="admin.test")
        await admin.post("/operators/password", name="bob", password="another passphrase",
                         password2="another passphrase")
        admin.client.cookies.set(pages.COOKIE, bob, domain="admin.test")
        assert (await admin.client.get("/")).headers["location"] == "/login"
        admin.client.cookies.set(pages.COOKIE, ann, domain="admin.test")
        # ann changes her own: she stays logged in.
        await admin.post("/operators/password", name="ann", password="her new passphrase",
                         password2="her new passphrase")
        assert (await admin.client.get("/operators")).status_code == 200
        await admin.post("/operators/remove", name="ann")
        assert "cannot remove yourself" in (await admin.client.get("/operators")).text
        await admin.post("/operators/remove", name="bob")
        assert [a.name for a in await admin.store.list_admins()] == ["ann"]
        admin.client.cookies.set(pages.COOKIE, bob, domain="admin.test")
        assert (await admin.client.get("/")).headers["location"] == "/login"
        actions = [(e.actor, e.action, e.detail)
                   for e in reversed(await admin.store.list_audit(10)) if e.actor != "test"]
        assert actions == [("operator:ann", "operator.add", "bob"),
                           ("operator:ann", "operator.password", "bob"),
                           ("operator:ann", "operator.password", "ann"),
                           ("operator:ann", "operator.remove", "bob")]
    run(tmp_path, test)


def test_error_paths_answer_with_a_page(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        await admin.login()
        assert (await admin.client.get("/login")).headers["location"] == "/"
        await admin.post("/domains/add", domain="example.test")
        await admin.post("/users/add", address="alice@example.test", password="pw")
        await admin.post("/domains/remove", domain="example.test")
        assert "still has 1 user" in (await admin.client.get("/domains")).text
        await admin.post("/domains/add", domain="not a domain!")
        assert "domain" in (await admin.client.get("/domains")).text.lower()
        await admin.post("/users/quota", address="alice@example.test", quota="lots")
        assert "is not a size" in (await admin.client.get("/users")).text
        await admin.post("/users/password", address="nobody@example.test", password="x")
        assert "no user nobody@example.test" in (await admin.client.get("/users")).text
        assert (await admin.client.get("/domains/-bad-")).status_code == 404
        assert (await admin.client.get("/queue/999")).status_code == 404
        gone = await admin.post("/queue/999/retry")
        assert gone.headers["location"] == "/queue"
        assert "no queued message 999" in (await admin.client.get("/queue")).text
        await admin.post("/queue/999/delete")
        assert "no queued message 999" in (await admin.client.get("/queue")).text
        declared = await admin.client.post(
            "/domains/add", content=b"x", headers={**ORIGIN, "content-length": "999999",
                                                   "content-type": "text/plain"})
        assert declared.status_code == 413
        mangled = await admin.client.post("/domains/add", content=b"csrf=%ff%fe\xff",
                                          headers=ORIGIN)
        assert mangled.status_code in (400, 403)
        # A notice is shown once.
        await admin.post("/domains/add", domain="second.test")
        assert "second.test added" in (await admin.client.get("/domains")).text
        assert "second.test added" not in (await admin.client.get("/domains")).text
    run(tmp_path, test)


def test_setup_refuses_differing_passwords(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        notice = await arm_bootstrap(admin.context, ["https://x:1"])
        assert notice is not None
        secret = notice.split("token=")[1].split()[0]
        page = await admin.client.get(f"/setup?token={secret}")
        differ = await admin.client.post("/setup", data={
            "csrf": form_token(page), "token": secret, "name": "ann", "password": PASSWORD,
            "password2": PASSWORD + "x"}, headers=ORIGIN)
        assert differ.status_code == 400 and "differ" in differ.text
        assert admin.context.bootstrap.armed and not await admin.store.list_admins()
    run(tmp_path, test, operator=False)


def test_typed_names_never_reach_the_log_raw(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async def test(admin: Admin) -> None:
        with caplog.at_level(logging.INFO, logger="mailhouse.admin"):
            await admin.login(name="x ip=1.2.3.4\nevent=admin.login operator=ann")
        failed = [r.getMessage() for r in caplog.records if "login_failed" in r.getMessage()]
        assert failed == ["event=admin.login_failed ip=127.0.0.1 operator=<invalid>"]
    run(tmp_path, test)


def test_the_cli_removing_or_changing_an_operator_ends_their_sessions(tmp_path: Path) -> None:
    async def test(admin: Admin) -> None:
        operators = Operators(admin.store, admin.context.passwords)
        await admin.login()
        await operators.set_password("ann", "changed elsewhere!", "cli:root")
        assert (await admin.client.get("/")).headers["location"] == "/login"
        await admin.login(password="changed elsewhere!")
        assert (await admin.client.get("/")).status_code == 200
        await operators.remove("ann", "cli:root")
        assert (await admin.client.get("/")).headers["location"] == "/login"
        late = await admin.client.post("/logout", data={"csrf": "x"}, headers=ORIGIN)
        assert late.status_code == 403
    run(tmp_path, test)
