"""Client autoconfiguration, fetched the way each client fetches it (at the function level: the
HTTP serving arrives with the admin web stack), and every output parsed back."""

from __future__ import annotations

import json
import plistlib
import xml.etree.ElementTree as ET
from dataclasses import replace
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailhouse.config import Config, ListenConfig
from mailhouse.service.autoconfig import (
    AUTODISCOVER_JSON,
    AUTODISCOVER_XML,
    JSON_TYPE,
    MAX_HOST,
    MAX_POX_BODY,
    MAX_POX_DEPTH,
    MAX_QUERY,
    MAX_QUERY_FIELDS,
    MOBILECONFIG,
    MOBILECONFIG_TYPE,
    POX_OUTLOOK_NS,
    POX_RESPONSE_NS,
    THUNDERBIRD_AUTOCONFIG_HOST,
    THUNDERBIRD_WELL_KNOWN,
    PoxRequestError,
    Request,
    Response,
    client_services,
    handle,
    handles,
    parse_pox_request,
)

HOST = "mail.example.org"
HOSTED = frozenset({"example.org", "xn--bcher-kva.example"})
CONFIG = Config(hostname=HOST)  # production listeners: every client service on its port
OUTLOOK = "{" + POX_OUTLOOK_NS + "}"
RESPONSE = "{" + POX_RESPONSE_NS + "}"

settings_ = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def only(*kinds: str) -> Config:
    """CONFIG serving only the listener kinds given (the rest have no address)."""
    listen = ListenConfig(**{kind: () for kind in ("smtp", "submission", "submissions", "imap",
                                                   "imaps", "pop3", "pop3s")
                             if kind not in kinds})
    return replace(CONFIG, listen=listen)


def fetch(method: str, path: str, query: str = "", body: bytes = b"", host: str = "",
          config: Config = CONFIG) -> Response:
    return handle(Request(method, path, query, body, host), config, HOSTED)


# --- Thunderbird ---------------------------------------------------------------------------------

def servers(xml: bytes) -> list[tuple[str, str, str, int, str, str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    out = []
    for server in root.iter():
        if server.tag in ("incomingServer", "outgoingServer"):
            out.append((server.tag, server.get("type", ""), server.findtext("hostname", ""),
                        int(server.findtext("port", "0")), server.findtext("socketType", ""),
                        server.findtext("username", ""), server.findtext("authentication", "")))
    return out


def test_thunderbird_autoconfig_host_form() -> None:
    # Thunderbird: GET https://autoconfig.example.org/mail/config-v1.1.xml?emailaddress=…
    response = fetch("GET", THUNDERBIRD_AUTOCONFIG_HOST,
                     "emailaddress=" + quote("fred+tag@Example.ORG", safe=""),
                     host="autoconfig.example.org")
    assert response.status == 200
    assert response.content_type.startswith("application/xml")
    root = ET.fromstring(response.body)
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    assert provider.findtext("domain") == "example.org"
    auth = ("%EMAILADDRESS%", "password-cleartext")
    assert servers(response.body) == [
        ("incomingServer", "imap", HOST, 993, "SSL", *auth),
        ("incomingServer", "imap", HOST, 143, "STARTTLS", *auth),
        ("incomingServer", "pop3", HOST, 995, "SSL", *auth),
        ("incomingServer", "pop3", HOST, 110, "STARTTLS", *auth),
        ("outgoingServer", "smtp", HOST, 465, "SSL", *auth),
        ("outgoingServer", "smtp", HOST, 587, "STARTTLS", *auth),
    ]


def test_thunderbird_well_known_form_with_and_without_address() -> None:
    with_address = fetch("GET", THUNDERBIRD_WELL_KNOWN, "emailaddress=fred%40example.org",
                         host="example.org")
    # Without the address (Thunderbird's privacy setting), the Host names the domain.
    without = fetch("GET", THUNDERBIRD_WELL_KNOWN, host="Example.org:443")
    assert with_address.status == without.status == 200
    assert with_address.body == without.body
    assert servers(without.body)[0][1:5] == ("imap", HOST, 993, "SSL")


def test_thunderbird_idn_domain_by_u_label() -> None:
    response = fetch("GET", THUNDERBIRD_AUTOCONFIG_HOST,
                     "emailaddress=" + quote("jörg@bücher.example", safe=""))
    assert response.status == 200
    provider = ET.fromstring(response.body).find("emailProvider")
    assert provider is not None and provider.get("id") == "xn--bcher-kva.example"


@pytest.mark.parametrize("host", ["autoconfig.other.test", "other.test", "", "[::1]:443",
                                  "autoconfig.", "a" * 300])
def test_thunderbird_unhosted_or_missing_host(host: str) -> None:
    assert fetch("GET", THUNDERBIRD_WELL_KNOWN, host=host).status in (400, 404)


def test_thunderbird_unhosted_address_is_404_and_not_reflected() -> None:
    response = fetch("GET", THUNDERBIRD_AUTOCONFIG_HOST, "emailaddress=evil%40other.test",
                     host="autoconfig.example.org")
    assert response.status == 404
    assert b"other.test" not in response.body


@pytest.mark.parametrize("query", ["emailaddress=", "emailaddress=no-at-sign",
                                   "emailaddress=%22q%20l%22%40example.org",
                                   "emailaddress=a%40example.org&emailaddress=b%40example.org",
                                   "emailaddress=%FF%40example.org",
                                   "emailaddress=a%00b%40example.org",
                                   "emailaddress=" + "a" * MAX_QUERY,
                                   "&".join(f"f{i}=1" for i in range(MAX_QUERY_FIELDS + 1))])
def test_thunderbird_bad_queries_are_400(query: str) -> None:
    assert fetch("GET", THUNDERBIRD_AUTOCONFIG_HOST, query, host="example.org").status == 400


def test_thunderbird_only_what_is_served() -> None:
    response = fetch("GET", THUNDERBIRD_WELL_KNOWN, host="example.org",
                     config=only("smtp", "submission", "imaps"))
    assert [s[:5] for s in servers(response.body)] == [
        ("incomingServer", "imap", HOST, 993, "SSL"),
        ("outgoingServer", "smtp", HOST, 587, "STARTTLS"),
    ]
    assert fetch("GET", THUNDERBIRD_WELL_KNOWN, host="example.org",
                 config=only("smtp")).status == 404


def test_ports_are_the_listeners_own() -> None:
    config = replace(CONFIG, listen=ListenConfig(imaps=("0.0.0.0:10993",), imap=(), pop3=(),
                                                 pop3s=(), submissions=("[::]:0",),
                                                 submission=()))
    assert [(s.kind, s.port) for s in client_services(config)] == [("imaps", 10993),
                                                                   ("submissions", 465)]
    # An explicit set of served kinds (the web layer may pass cli_dns.offered_services).
    assert [s.kind for s in client_services(CONFIG, {"pop3", "submission"})] == [
        "pop3", "submission"]


def test_methods_and_unknown_paths() -> None:
    assert fetch("POST", THUNDERBIRD_WELL_KNOWN, host="example.org").status == 405
    assert fetch("GET", AUTODISCOVER_XML).status == 405
    assert fetch("GET", "/mail/other.xml").status == 404
    assert handles("/Autodiscover/Autodiscover.xml")
    assert handles(AUTODISCOVER_JSON + "/v1.0/a@example.org")
    assert not handles("/admin")


# --- Autodiscover POX ----------------------------------------------------------------------------

def outlook_request(address: str, schema: str = POX_OUTLOOK_NS) -> bytes:
    """The body Outlook POSTs (Microsoft's POX reference, request schema 2006)."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
        'requestschema/2006">\r\n'
        "  <Request>\r\n"
        f"    <EMailAddress>{address}</EMailAddress>\r\n"
        f"    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\r\n"
        "  </Request>\r\n"
        "</Autodiscover>\r\n").encode()


def protocols(xml: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == RESPONSE + "Autodiscover"
    account = root.find(f"{OUTLOOK}Response/{OUTLOOK}Account")
    assert account is not None
    assert account.findtext(OUTLOOK + "AccountType") == "email"
    assert account.findtext(OUTLOOK + "Action") == "settings"
    return [{child.tag.removeprefix(OUTLOOK): child.text or "" for child in protocol}
            for protocol in account.findall(OUTLOOK + "Protocol")]


def test_autodiscover_pox_as_outlook_asks() -> None:
    # Outlook POSTs to https://autodiscover.example.org/Autodiscover/Autodiscover.xml.
    response = fetch("POST", "/Autodiscover/Autodiscover.xml",
                     body=outlook_request("Fred@Example.org"))
    assert response.status == 200 and response.content_type.startswith("text/xml")
    found = [(p["Type"], p["Server"], p["Port"], p["SSL"], p["Encryption"], p["LoginName"],
              p["SPA"]) for p in protocols(response.body)]
    user = "fred@example.org"
    assert found == [("IMAP", HOST, "993", "on", "SSL", user, "off"),
                     ("IMAP", HOST, "143", "on", "TLS", user, "off"),
                     ("POP3", HOST, "995", "on", "SSL", user, "off"),
                     ("POP3", HOST, "110", "on", "TLS", user, "off"),
                     ("SMTP", HOST, "465", "on", "SSL", user, "off"),
                     ("SMTP", HOST, "587", "on", "TLS", user, "off")]


def test_autodiscover_pox_only_what_is_served() -> None:
    response = fetch("POST", AUTODISCOVER_XML, body=outlook_request("fred@example.org"),
                     config=only("pop3", "submissions"))
    assert [(p["Type"], p["Port"], p["Encryption"]) for p in protocols(response.body)] == [
        ("POP3", "110", "TLS"), ("SMTP", "465", "SSL")]


def error_code(xml: bytes) -> str | None:
    root = ET.fromstring(xml)
    return root.findtext(f"{RESPONSE}Response/{RESPONSE}Error/{RESPONSE}ErrorCode")


def test_autodiscover_pox_activesync_schema_has_no_provider() -> None:
    schema = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    response = fetch("POST", AUTODISCOVER_XML, body=outlook_request("fred@example.org", schema))
    assert response.status == 200
    assert error_code(response.body) == "601"


def test_autodiscover_pox_unhosted_domain_is_404() -> None:
    response = fetch("POST", AUTODISCOVER_XML, body=outlook_request("fred@other.test"))
    assert response.status == 404 and b"other.test" not in response.body


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                  b"<Autodiscover><Request><EMailAddress>&lol2;@example.org</EMailAddress>"
                  b"</Request></Autodiscover>")
EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                   b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request>"
                   b"</Autodiscover>")


@pytest.mark.parametrize("body", [
    b"", b"not xml", b"<Autodiscover><Request>", BILLION_LAUGHS, EXTERNAL_ENTITY,
    b'<!DOCTYPE Autodiscover SYSTEM "http://attacker.test/x.dtd"><Autodiscover/>',
    b"<Autodiscover><Request><EMailAddress>&undefined;</EMailAddress></Request></Autodiscover>",
    b"<Other><Request><EMailAddress>fred@example.org</EMailAddress></Request></Other>",
    b"<Autodiscover><Request/></Autodiscover>",
    b"<Autodiscover><Request><EMailAddress>a@example.org</EMailAddress>"
    b"<EMailAddress>b@example.org</EMailAddress></Request></Autodiscover>",
    b"<Autodiscover>" + b"<x>" * MAX_POX_DEPTH + b"</x>" * MAX_POX_DEPTH + b"</Autodiscover>",
])
def test_autodiscover_pox_refuses_malformed_and_dtd(body: bytes) -> None:
    response = fetch("POST", AUTODISCOVER_XML, body=body)
    assert response.status == 400
    assert error_code(response.body) == "600"


def test_autodiscover_pox_size_limit() -> None:
    request = outlook_request("fred@example.org")
    padded = request.replace(b"<Request>", b"<Request>" + b" " * (MAX_POX_BODY - len(request)))
    assert len(padded) == MAX_POX_BODY
    assert fetch("POST", AUTODISCOVER_XML, body=padded).status == 200
    assert fetch("POST", AUTODISCOVER_XML, body=padded + b" ").status == 413


def test_autodiscover_pox_escapes_what_it_echoes() -> None:
    # The login name is the canonical address: characters XML reserves arrive escaped and
    # come back as the same text.
    response = fetch("POST", AUTODISCOVER_XML,
                     body=outlook_request("o&apos;&amp;x@example.org"))
    assert response.status == 200
    assert protocols(response.body)[0]["LoginName"] == "o'&x@example.org"


# --- Autodiscover JSON v2 ------------------------------------------------------------------------

def test_autodiscover_json_v1_protocol() -> None:
    # Outlook: GET https://autodiscover.example.org/autodiscover/autodiscover.json
    #          ?Email=fred@example.org&Protocol=AutodiscoverV1&RedirectCount=1
    response = fetch("GET", "/autodiscover/autodiscover.json",
                     "Email=fred%40example.org&Protocol=AutodiscoverV1&RedirectCount=1")
    assert (response.status, response.content_type) == (200, JSON_TYPE)
    assert json.loads(response.body) == {
        "Protocol": "AutodiscoverV1", "Url": f"https://{HOST}/autodiscover/autodiscover.xml"}
    # The address-in-path form.
    path_form = fetch("GET", "/autodiscover/autodiscover.json/v1.0/fred%40example.org",
                      "Protocol=autodiscoverv1")
    assert path_form.body == response.body


@pytest.mark.parametrize("protocol", ["ActiveSync", "Ews", "Rest", "", "x'\"<>"])
def test_autodiscover_json_other_protocols_are_invalid(protocol: str) -> None:
    response = fetch("GET", AUTODISCOVER_JSON,
                     urlencode({"Email": "fred@example.org", "Protocol": protocol}))
    assert response.status == 400
    answer = json.loads(response.body)
    assert answer["ErrorCode"] == "InvalidProtocol"
    assert "<" not in answer["ErrorMessage"]


@pytest.mark.parametrize(("query", "status"), [
    ("Email=fred%40other.test&Protocol=AutodiscoverV1", 404),
    ("Email=nonsense&Protocol=AutodiscoverV1", 400),
    ("Protocol=AutodiscoverV1", 400),
])
def test_autodiscover_json_errors(query: str, status: int) -> None:
    response = fetch("GET", AUTODISCOVER_JSON, query)
    assert response.status == status and response.content_type == JSON_TYPE
    assert "ErrorCode" in json.loads(response.body)


def test_autodiscover_json_path_form_bounds() -> None:
    assert fetch("GET", AUTODISCOVER_JSON + "/v1.0/%FF%40example.org",
                 "Protocol=AutodiscoverV1").status == 400
    assert fetch("GET", AUTODISCOVER_JSON + "/v1.0/" + "a" * 1100,
                 "Protocol=AutodiscoverV1").status == 400


# --- Apple configuration profile -----------------------------------------------------------------

def test_mobileconfig_per_user() -> None:
    response = fetch("GET", MOBILECONFIG, "emailaddress=Fred%40example.org")
    assert (response.status, response.content_type) == (200, MOBILECONFIG_TYPE)
    profile = plistlib.loads(response.body)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    [mail] = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert {key: mail[key] for key in (
        "EmailAccountType", "EmailAddress", "IncomingMailServerHostName",
        "IncomingMailServerPortNumber", "IncomingMailServerUseSSL", "IncomingMailServerUsername",
        "IncomingMailServerAuthentication", "OutgoingMailServerHostName",
        "OutgoingMailServerPortNumber", "OutgoingMailServerUseSSL",
        "OutgoingMailServerUsername", "OutgoingPasswordSameAsIncomingPassword")} == {
        "EmailAccountType": "EmailTypeIMAP", "EmailAddress": "fred@example.org",
        "IncomingMailServerHostName": HOST, "IncomingMailServerPortNumber": 993,
        "IncomingMailServerUseSSL": True, "IncomingMailServerUsername": "fred@example.org",
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": HOST, "OutgoingMailServerPortNumber": 465,
        "OutgoingMailServerUseSSL": True, "OutgoingMailServerUsername": "fred@example.org",
        "OutgoingPasswordSameAsIncomingPassword": True}


def test_mobileconfig_uuids_are_stable_per_user() -> None:
    def uuids(address: str) -> tuple[str, str]:
        profile = plistlib.loads(fetch("GET", MOBILECONFIG, "emailaddress=" + address).body)
        return profile["PayloadUUID"], profile["PayloadContent"][0]["PayloadUUID"]

    first = uuids("fred%40example.org")
    assert uuids("FRED%40example.org") == first  # the same account
    assert uuids("anna%40example.org") != first
    assert len(set(first)) == 2


def test_mobileconfig_pop_and_starttls_when_that_is_all() -> None:
    profile = plistlib.loads(fetch("GET", MOBILECONFIG, "emailaddress=fred%40example.org",
                                   config=only("pop3", "submission")).body)
    mail = profile["PayloadContent"][0]
    assert (mail["EmailAccountType"], mail["IncomingMailServerPortNumber"],
            mail["OutgoingMailServerPortNumber"]) == ("EmailTypePOP", 110, 587)


@pytest.mark.parametrize(("query", "config", "status"), [
    ("", CONFIG, 400),
    ("emailaddress=fred%40other.test", CONFIG, 404),
    ("emailaddress=fred%40example.org", only("imaps"), 404),  # nothing to send with
    ("emailaddress=fred%40example.org", only("submission"), 404),  # nothing to read with
])
def test_mobileconfig_errors(query: str, config: Config, status: int) -> None:
    assert fetch("GET", MOBILECONFIG, query, config=config).status == status


# --- properties: any input, a well-formed answer, never a crash -----------------------------------

addresses = st.one_of(
    st.text(max_size=80),
    st.builds(lambda local, domain: f"{local}@{domain}",
              st.text(min_size=1, max_size=40),
              st.sampled_from(["example.org", "EXAMPLE.org", "bücher.example", "other.test"])),
    st.from_regex(r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]{1,30}@example\.org", fullmatch=True),
)


def check_well_formed(response: Response) -> None:
    assert 200 <= response.status < 600
    if response.content_type.startswith(("application/xml", "text/xml")):
        ET.fromstring(response.body)
    elif response.content_type == JSON_TYPE:
        json.loads(response.body)
    elif response.content_type == MOBILECONFIG_TYPE:
        plistlib.loads(response.body)
    else:
        response.body.decode("utf-8")


@settings_
@given(address=addresses, path=st.sampled_from([THUNDERBIRD_WELL_KNOWN,
                                                THUNDERBIRD_AUTOCONFIG_HOST, MOBILECONFIG]))
@example(address="\ud800@example.org", path=MOBILECONFIG)
@example(address="a\x0b@example.org", path=THUNDERBIRD_AUTOCONFIG_HOST)
def test_any_query_address(address: str, path: str) -> None:
    check_well_formed(fetch("GET", path, urlencode({"emailaddress": address},
                                                   errors="surrogatepass")))
    # Unencoded too: a web layer may hand over the query as it came.
    check_well_formed(fetch("GET", path, "emailaddress=" + address))


@settings_
@given(address=addresses)
def test_any_pox_address(address: str) -> None:
    escaped = address.replace("&", "&amp;").replace("<", "&lt;")
    response = fetch("POST", AUTODISCOVER_XML,
                     body=outlook_request(escaped).decode().encode("utf-8", "surrogatepass"))
    check_well_formed(response)
    if response.status == 200:
        assert {p["LoginName"].rpartition("@")[2] for p in protocols(response.body)} <= HOSTED


# Pieces of a real request, of DTDs and of entity references, mixed with arbitrary bytes.
POX_PIECES = [outlook_request("fred@example.org"), b"<Autodiscover>", b"</Autodiscover>",
              b"<Request>", b"</Request>", b"<EMailAddress>", b"</EMailAddress>",
              b"fred@example.org", b"@other.test", b"&amp;", b"&lol;", b"<!DOCTYPE a [",
              b'<!ENTITY lol "x">', b"]>", b"<![CDATA[", b"]]>", b'<?xml version="1.0"?>',
              b"<AcceptableResponseSchema>", b"</AcceptableResponseSchema>",
              POX_OUTLOOK_NS.encode(), b"\xef\xbb\xbf", b"\x00"]


@settings_
@given(body=st.one_of(st.binary(max_size=600),
                      st.lists(st.one_of(st.sampled_from(POX_PIECES), st.binary(max_size=8)),
                               max_size=30).map(b"".join)))
def test_any_pox_body(body: bytes) -> None:
    check_well_formed(fetch("POST", AUTODISCOVER_XML, body=body))


@settings_
@given(address=addresses, protocol=st.text(max_size=20), in_path=st.booleans())
def test_any_json_lookup(address: str, protocol: str, in_path: bool) -> None:
    if in_path:
        path = AUTODISCOVER_JSON + "/v1.0/" + quote(address, safe="", errors="surrogatepass")
        query = urlencode({"Protocol": protocol}, errors="surrogatepass")
    else:
        path = AUTODISCOVER_JSON
        query = urlencode({"Email": address, "Protocol": protocol}, errors="surrogatepass")
    check_well_formed(fetch("GET", path, query))


@settings_
@given(host=st.text(max_size=60), query=st.text(max_size=60))
def test_any_host_and_raw_query(host: str, query: str) -> None:
    check_well_formed(fetch("GET", THUNDERBIRD_WELL_KNOWN, query, host=host))


# --- limits: each one crossed ---------------------------------------------------------------------

def test_query_limits_at_the_edge() -> None:
    base = "emailaddress=fred%40example.org&pad="
    at_limit = base + "x" * (MAX_QUERY - len(base))
    assert fetch("GET", MOBILECONFIG, at_limit).status == 200
    assert fetch("GET", MOBILECONFIG, at_limit + "x").status == 400
    fields = "&".join(["emailaddress=fred%40example.org"]
                      + [f"f{i}=1" for i in range(MAX_QUERY_FIELDS - 1)])
    assert fetch("GET", MOBILECONFIG, fields).status == 200
    assert fetch("GET", MOBILECONFIG, fields + "&one=more").status == 400


def test_pox_depth_at_the_edge() -> None:
    def nested(depth: int) -> bytes:
        inner = depth - 3  # Autodiscover/Request/EMailAddress and the rest inside it
        return (b"<Autodiscover><Request><EMailAddress>fred@example.org" + b"<x>" * inner
                + b"</x>" * inner + b"</EMailAddress></Request></Autodiscover>")

    assert parse_pox_request(nested(MAX_POX_DEPTH)) == {"EMailAddress": "fred@example.org"}
    with pytest.raises(PoxRequestError):
        parse_pox_request(nested(MAX_POX_DEPTH + 1))


def test_pox_without_schema_is_an_outlook_request() -> None:
    body = (b"<Autodiscover><Request><EMailAddress> fred@example.org </EMailAddress>"
            b"</Request></Autodiscover>")
    response = fetch("POST", AUTODISCOVER_XML, body=body)
    assert response.status == 200 and protocols(response.body)[0]["LoginName"] == (
        "fred@example.org")


def test_host_limit() -> None:
    assert fetch("GET", THUNDERBIRD_WELL_KNOWN, host="x" * (MAX_HOST + 1)).status == 400
    assert fetch("GET", THUNDERBIRD_WELL_KNOWN, host="x" * MAX_HOST).status == 404
