"""The web admin end to end in a real browser: Debian's chromium, headless, driven by Selenium
through chromium-driver, against a real server (a subprocess) with the admin listener on.

One operator's first visit: the bootstrap link from the start output, the first operator, a
domain (its DNS records and live checks against the test DNS server), a user, a message that
the remote defers and a retry from the queue page, logging out and in; then every page at a
phone's width without horizontal scrolling.

The browser trusts the server's own self-signed certificate by its public key
(--ignore-certificate-errors-spki-list), not every certificate. Under CI=true a missing
chromium, chromium-driver or selenium fails instead of skipping (tests/helpers/tools.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.helpers.dns import DnsServer
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_port
from tests.helpers.tools import require_tools, under_ci

pytestmark = [pytest.mark.interop, pytest.mark.slow]

HOST = "mx.example.test"
DOMAIN = "example.test"
OPERATOR = "ann"
OPERATOR_PASSWORD = "a passphrase long enough"
USER = f"alice@{DOMAIN}"
USER_PASSWORD = "correct horse battery"
PHONE = {"width": 375, "height": 740, "deviceScaleFactor": 2, "mobile": True}
WAIT = 20.0  # seconds for anything the browser or the server does


def selenium_webdriver() -> Any:
    try:
        from selenium import webdriver
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[dev]')"
        if under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return webdriver


def spki_hash(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)), the form Chromium's SPKI allow-list takes."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT,
             page: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f"; the page:\n{page()}" if page is not None else ""
            raise AssertionError(f"timed out waiting for {what}{shown}")
        time.sleep(0.2)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[MailhouseServer, int]]:
    tools = require_tools("chromium", "chromedriver")
    assert tools
    admin_port, dead_port = free_port(), free_port()  # nothing listens on the remote's port
    zones: dict[str, object] = {
        HOST: {"A": ["127.0.0.1"]},
        DOMAIN: {"MX": [(10, HOST)]},
        "remote.test": {"MX": [(10, "mx.remote.test")]},
        "mx.remote.test": {"A": ["127.0.0.1"]},
    }
    with DnsServer(zones) as dns:  # type: ignore[arg-type]
        server = MailhouseServer(
            tmp_path / "mh", protocols=("smtp", "submissions"), hostname=HOST,
            extra_toml=(f'[admin]\nlisten = ["127.0.0.1:{admin_port}"]\n'
                        f'[delivery]\nport = {dead_port}\nconnect_timeout = 2\n'
                        f'[dns]\nnameservers = ["{dns.nameserver}"]\n'))
        server.start()
        try:
            yield server, admin_port
        finally:
            server.close()


@pytest.fixture
def browser(world: tuple[MailhouseServer, int], tmp_path: Path) -> Iterator[Any]:
    webdriver = selenium_webdriver()
    from selenium.webdriver.chrome.service import Service

    server, _ = world
    cert = server.data_dir / "tls" / "selfsigned-cert.pem"
    wait_for(cert.is_file, "the server's self-signed certificate")
    options = webdriver.ChromeOptions()
    options.binary_location = require_tools("chromium")["chromium"]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     f"--user-data-dir={tmp_path / 'chromium'}",
                     f"--ignore-certificate-errors-spki-list={spki_hash(cert)}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options,
                              service=Service(require_tools("chromedriver")["chromedriver"]))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def setup_link(server: MailhouseServer, port: int) -> str:
    def found() -> str | None:
        match = re.search(rf"https://127\.0\.0\.1:{port}/setup\?token=\S+",
                          server.log_path.read_text())
        return match[0] if match else None
    link: str = wait_for(found, "the setup link in the start output")
    return link


def fill(driver: Any, form_action: str, button: str = "button", **fields: str) -> None:
    """Type into the named fields of the form posting to `form_action`, then submit it."""
    from selenium.webdriver.common.by import By

    form = driver.find_element(By.CSS_SELECTOR, f'form[action="{form_action}"]')
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)
    form.find_element(By.CSS_SELECTOR, button).click()


def text(driver: Any) -> str:
    """The page's text; "" while a navigation replaces the page under us."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        value: str = driver.find_element(By.TAG_NAME, "body").text
    except (StaleElementReferenceException, NoSuchElementException):
        return ""
    return value


def submit(server: MailhouseServer, to: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=context,
                          timeout=30) as smtp:
        smtp.login(USER, USER_PASSWORD)
        smtp.sendmail(USER, [to], f"From: <{USER}>\r\nTo: <{to}>\r\nSubject: hi\r\n\r\n"
                      "hello\r\n".encode())


def test_operator_first_visit(world: tuple[MailhouseServer, int], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    server, port = world
    base = f"https://127.0.0.1:{port}"
    driver = browser

    # The bootstrap link printed at start makes the first operator and logs them in.
    driver.get(setup_link(server, port))
    assert "Make the first operator" in text(driver)
    fill(driver, "/setup", name=OPERATOR, password=OPERATOR_PASSWORD,
         password2=OPERATOR_PASSWORD)
    wait_for(lambda: "Dashboard" in driver.title, "the dashboard",
             page=lambda: driver.title + "\n" + text(driver))
    assert f"Log out {OPERATOR}" in text(driver)
    cookie = driver.get_cookie("__Host-mailhouse-admin")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    # A domain: its records to publish, and the live checks (the test DNS has its MX only).
    driver.get(f"{base}/domains")
    fill(driver, "/domains/add", domain=DOMAIN)
    wait_for(lambda: driver.title.startswith(DOMAIN), "the domain's page")
    records = driver.find_element(By.ID, "records").text
    assert re.search(rf"{re.escape(DOMAIN)}\.\s+IN\s+MX\s+10\s+{re.escape(HOST)}\.", records)
    assert f"._domainkey.{DOMAIN}." in records
    checks = {item.find_element(By.CSS_SELECTOR, ".check-name").text:
              item.find_element(By.CSS_SELECTOR, ".badge").text
              for item in driver.find_elements(By.CSS_SELECTOR, "#checks li")}
    assert checks[f"mx {DOMAIN}"] == "ok", checks
    assert checks[f"dmarc {DOMAIN}"] == "fail", checks  # not published yet

    # A user.
    driver.get(f"{base}/users")
    fill(driver, "/users/add", address=USER, password=USER_PASSWORD)
    wait_for(lambda: f"{USER} added." in text(driver), "the user added")
    assert USER in driver.find_element(By.ID, "users").text

    # The user sends to a remote that refuses connections: deferred, visible in the queue.
    submit(server, "bob@remote.test")

    def deferred_in_queue() -> bool:
        driver.get(f"{base}/queue")
        return "bob@remote.test" in text(driver) and "deferred" in text(driver).lower()
    wait_for(deferred_in_queue, "the deferred message in the queue", timeout=60)
    driver.find_element(By.CSS_SELECTOR, "#queue tbody a").click()
    wait_for(lambda: driver.title.startswith("Message "), "the message page")
    attempts = driver.find_element(By.CSS_SELECTOR, "#recipients tbody td.num").text
    assert "bob@remote.test" in text(driver) and int(attempts) >= 1
    driver.find_element(By.ID, "retry").click()
    wait_for(lambda: "to be tried again now" in text(driver), "the retry notice")

    def tried_again() -> bool:
        driver.refresh()
        count = driver.find_element(By.CSS_SELECTOR, "#recipients tbody td.num").text
        return int(count) > int(attempts)
    wait_for(tried_again, "another delivery attempt after the retry", timeout=60)

    # The message trace: found by its recipient, with its reception, deferrals and the retry.
    def traced() -> bool:
        driver.get(f"{base}/trace")
        fill(driver, "/trace", q="bob@remote.test")
        steps = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "table.steps .badge")]
        return {"received", "queued", "deferred", "retry"} <= set(steps)
    wait_for(traced, "the message's steps in the trace", timeout=30)
    driver.get(f"{base}/audit")
    audit = driver.find_element(By.ID, "audit").text
    assert f"operator:{OPERATOR} queue.retry" in audit
    assert f"operator:{OPERATOR} user.add {USER}" in audit

    # Log out; the pages need a login again; log in with the form.
    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(lambda: driver.title.startswith("Log in"), "the login page")
    driver.get(f"{base}/users")
    assert driver.title.startswith("Log in")
    fill(driver, "/login", name=OPERATOR, password="wrong password!")
    wait_for(lambda: "Wrong name or password" in text(driver), "the refusal")
    fill(driver, "/login", name=OPERATOR, password=OPERATOR_PASSWORD)
    wait_for(lambda: "Dashboard" in driver.title, "the dashboard after login")

    # A phone's width: no page scrolls sideways (wide tables scroll in their own box).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    for path in ("/", "/domains", f"/domains/{DOMAIN}", "/checks", "/users", "/queue",
                 "/trace?q=bob@remote.test", "/audit", "/operators"):
        driver.get(base + path)
        width = driver.execute_script("return window.innerWidth")
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        assert width == PHONE["width"] and scroll <= width, (path, scroll, width)
