"""The public HTTPS listener (`[web] listen`, web/public.py): each autoconfiguration document
fetched from the real server over TLS the way its client does — Host header, path, method."""

from __future__ import annotations

import hashlib
import http.client
import json
import plistlib
import ssl
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_port
from tests.service.test_autoconfig import outlook_request, protocols

HOST = "mx.example.test"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MailhouseServer, int]]:
    port = free_port()
    server = MailhouseServer(tmp_path_factory.mktemp("web") / "mh", hostname=HOST,
                             protocols=("smtp", "submissions", "imaps"),
                             extra_toml=f'[web]\nlisten = ["127.0.0.1:{port}"]')
    server.add_domain("example.org")
    server.start()
    try:
        yield server, port
    finally:
        server.close()


def fetch(port: int, method: str, path: str, host: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_thunderbird_autoconfig_host_and_well_known(web: tuple[MailhouseServer, int]) -> None:
    server, port = web
    for host, path in (("autoconfig.example.org",
                        "/mail/config-v1.1.xml?emailaddress=alice%40example.org"),
                       ("example.org", "/.well-known/autoconfig/mail/config-v1.1.xml")):
        status, headers, body = fetch(port, "GET", path, host)
        assert status == 200, body
        root = ET.fromstring(body)
        incoming = root.find("emailProvider/incomingServer")
        assert incoming is not None
        assert (incoming.findtext("hostname"), incoming.findtext("port"),
                incoming.findtext("socketType")) == (HOST, str(server.port("imaps")), "SSL")
        outgoing = root.find("emailProvider/outgoingServer")
        assert outgoing is not None and outgoing.findtext("port") == str(
            server.port("submissions"))
        assert headers["cache-control"] == "no-store"


def test_autodiscover_pox_and_json(web: tuple[MailhouseServer, int]) -> None:
    server, port = web
    status, _, body = fetch(port, "POST", "/Autodiscover/Autodiscover.xml",
                            "autodiscover.example.org", outlook_request("alice@example.org"),
                            {"Content-Type": "text/xml"})
    assert status == 200
    assert [(p["Type"], p["Port"]) for p in protocols(body)] == [
        ("IMAP", str(server.port("imaps"))), ("SMTP", str(server.port("submissions")))]
    status, _, body = fetch(port, "GET", "/autodiscover/autodiscover.json"
                            "?Email=alice%40example.org&Protocol=AutodiscoverV1",
                            "autodiscover.example.org")
    assert status == 200 and json.loads(body)["Protocol"] == "AutodiscoverV1"


def test_apple_profile_is_a_download(web: tuple[MailhouseServer, int]) -> None:
    _, port = web
    status, headers, body = fetch(port, "GET",
                                  "/mail/mailhouse.mobileconfig?emailaddress=alice%40example.org",
                                  "example.org")
    assert status == 200 and "attachment" in headers["content-disposition"]
    # Signed with the server's own certificate (the self-signed one here): CMS, DER.
    server, _ = web
    certificate = server.data_dir / "tls" / "selfsigned-cert.pem"
    profile = plistlib.loads(verified_content(body, certificate))
    assert profile["PayloadContent"][0]["IncomingMailServerHostName"] == HOST


def verified_content(signed: bytes, trusted: Path) -> bytes:
    """The content of CMS SignedData whose signature verifies up to `trusted` (openssl)."""
    done = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-CAfile",
                           str(trusted), "-purpose", "any"], input=signed,
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_refusals(web: tuple[MailhouseServer, int]) -> None:
    _, port = web
    assert fetch(port, "GET", "/", "example.org")[0] == 404
    assert fetch(port, "GET", "/admin", "example.org")[0] == 404
    assert fetch(port, "GET", "/mail/config-v1.1.xml?emailaddress=a%40elsewhere.example",
                 "autoconfig.elsewhere.example")[0] == 404  # not a domain of ours
    big = b"<x>" + b"a" * 20_000 + b"</x>"
    assert fetch(port, "POST", "/autodiscover/autodiscover.xml", "autodiscover.example.org",
                 big)[0] == 413


def test_off_unless_listed(tmp_path: Path) -> None:
    from mailhouse.config import load_config

    path = tmp_path / "m.toml"
    path.write_text("")
    assert load_config(path).web.listen == ()


def test_mta_sts_policy_as_a_sending_server_fetches_it(
        web: tuple[MailhouseServer, int]) -> None:
    """RFC 8461 §3.3: GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt; §3.2 its format;
    the id `dns-records` prints is the served policy's."""
    server, port = web
    status, headers, body = fetch(port, "GET", "/.well-known/mta-sts.txt",
                                  "mta-sts.example.org")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body == (b"version: STSv1\r\nmode: testing\r\nmx: " + HOST.encode()
                    + b"\r\nmax_age: 604800\r\n")
    records = server.cli("dns-records", "example.org").stdout.decode()
    want = hashlib.sha256(body).hexdigest()[:20]
    assert f'_mta-sts.example.org. IN TXT "v=STSv1; id={want}"' in records
    assert f"mta-sts.example.org. IN CNAME {HOST}." in records
    for host in ("mta-sts.elsewhere.example", "example.org", "mta-sts.example.org.evil"):
        assert fetch(port, "GET", "/.well-known/mta-sts.txt", host)[0] == 404, host
    assert fetch(port, "POST", "/.well-known/mta-sts.txt", "mta-sts.example.org",
                 b"x")[0] == 404
