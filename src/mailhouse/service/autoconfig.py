"""Client autoconfiguration: the documents mail clients fetch to set themselves up from an
address alone (issue 9 §3).

- Thunderbird's autoconfig file (`clientConfig` version 1.1, the format of Thunderbird's ISPDB),
  at `/.well-known/autoconfig/mail/config-v1.1.xml` on the mail domain and at
  `/mail/config-v1.1.xml?emailaddress=…` on `autoconfig.DOMAIN`;
- Microsoft Autodiscover: the "plain old XML" (POX) exchange Outlook POSTs to
  `/autodiscover/autodiscover.xml`, and the JSON v2 lookup
  `/autodiscover/autodiscover.json?Email=…&Protocol=…` that points Outlook at it;
- an Apple configuration profile (`.mobileconfig`) per address (signed on its way out by
  service/profile_signing.py, with the server's certificate).

This module only makes documents; serving them over HTTPS is the admin web stack's job. Its
whole interface is `handle(Request, config, hosted domains) -> Response`, a status, a content
type and bytes, so any web framework can call it and the tests can fetch each document "the
way the client does" without one.

Everything in a request is untrusted. Addresses are parsed as the accounts service parses them
(`canonical_address`), only domains the store hosts are answered (others get 404, so the server
is no oracle for other people's domains), and no input is ever pasted into a document: XML is
built with ElementTree, the profile with plistlib, JSON with json. Whether a *user* exists is
never revealed: every address of a hosted domain gets the same settings.

Which services are offered mirrors `dns-records` (cli_dns.offered_services, RFC 6186 SRV): a
client service is offered when the config has a listener for it. Implicit TLS comes first
wherever a client takes an ordered list (RFC 8314 §4.1: clients should prefer it), IMAP before
POP3.
"""

from __future__ import annotations

import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from plistlib import dumps as plist_dumps
from typing import Final, NamedTuple
from urllib.parse import parse_qsl, unquote
from xml.parsers import expat

from mailhouse.config import STANDARD_PORTS, Config
from mailhouse.model import AddressError, normalize_domain
from mailhouse.service.accounts import InvalidInput, canonical_address

# --- where clients look ---------------------------------------------------------------------------

THUNDERBIRD_WELL_KNOWN: Final = "/.well-known/autoconfig/mail/config-v1.1.xml"
THUNDERBIRD_AUTOCONFIG_HOST: Final = "/mail/config-v1.1.xml"
AUTODISCOVER_XML: Final = "/autodiscover/autodiscover.xml"
AUTODISCOVER_JSON: Final = "/autodiscover/autodiscover.json"
# Outlook also asks with the address in the path: /autodiscover/autodiscover.json/v1.0/ADDRESS.
AUTODISCOVER_JSON_V1: Final = AUTODISCOVER_JSON + "/v1.0/"
MOBILECONFIG: Final = "/mail/mailhouse.mobileconfig"

# --- limits (each crossed by a test) --------------------------------------------------------------

# An Outlook POX request is about 400 octets; 16 KiB leaves room for any client's whitespace
# and comments while bounding what the XML parser ever sees (answered 413 beyond).
MAX_POX_BODY: Final = 16 * 1024
# Element nesting in a POX request: the real one is 3 deep.
MAX_POX_DEPTH: Final = 16
# A query string (answered 400 beyond): an address is at most 256 octets, 3 times that encoded.
MAX_QUERY: Final = 2048
MAX_QUERY_FIELDS: Final = 16
# A Host header: a domain (255) and a port.
MAX_HOST: Final = 262
# The address-in-path form of the JSON lookup (percent-encoded).
MAX_PATH: Final = 1024

# --- content types --------------------------------------------------------------------------------

XML_TYPE: Final = "application/xml; charset=utf-8"
POX_TYPE: Final = "text/xml; charset=utf-8"  # what Exchange answers Outlook with
JSON_TYPE: Final = "application/json; charset=utf-8"
MOBILECONFIG_TYPE: Final = "application/x-apple-aspen-config"
TEXT_TYPE: Final = "text/plain; charset=utf-8"

# --- Autodiscover names (Microsoft's POX reference) -----------------------------------------------

POX_REQUEST_NS: Final = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
POX_RESPONSE_NS: Final = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
POX_OUTLOOK_NS: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a")
# Error codes of the Autodiscover Error element: 600 an invalid request, 601 no provider for the
# AcceptableResponseSchema asked for (e.g. an ActiveSync phone's "mobilesync" schema).
POX_INVALID_REQUEST: Final = 600
POX_NO_PROVIDER: Final = 601
# The only JSON v2 protocol mailhouse can name a URL for (it serves no EWS, ActiveSync, REST).
JSON_PROTOCOL: Final = "AutodiscoverV1"


class Request(NamedTuple):
    """What the web layer hands over: the method, the path without its query, the raw
    (percent-encoded) query string, the body and the Host header (the mail domain for
    Thunderbird's well-known form, which may carry no address)."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""
    host: str = ""


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ClientService:
    """One way a client can reach us: `protocol` "imap", "pop3" or "smtp", the port, and
    whether TLS starts at once (RFC 8314 implicit TLS) or after STARTTLS/STLS."""

    kind: str  # the listener kind of config.py ("imaps", "submission", …)
    protocol: str
    port: int
    implicit_tls: bool

    @property
    def incoming(self) -> bool:
        return self.protocol != "smtp"


# Preference order: implicit TLS first (RFC 8314 §4.1), IMAP before POP3.
_CLIENT_KINDS: Final = (("imaps", "imap", True), ("imap", "imap", False),
                        ("pop3s", "pop3", True), ("pop3", "pop3", False),
                        ("submissions", "smtp", True), ("submission", "smtp", False))
CLIENT_KINDS: Final = tuple(kind for kind, _, _ in _CLIENT_KINDS)


def served_kinds(config: Config) -> frozenset[str]:
    """The client listener kinds this config serves: those with an address (as
    cli_dns.offered_services, which the web layer may pass instead to subtract the listeners
    `serve` does not build yet)."""
    return frozenset(kind for kind in CLIENT_KINDS if config.listen_endpoints(kind))


def client_services(config: Config, served: Collection[str] | None = None) -> tuple[
        ClientService, ...]:
    """The services to offer, most preferred first. The port is the listener's own (its first
    address; the standard port when that asks the kernel for one), so a server on other ports
    than the standard ones is still described as it answers."""
    offered = served_kinds(config) if served is None else served
    out = []
    for kind, protocol, implicit in _CLIENT_KINDS:
        if kind not in offered:
            continue
        endpoints = config.listen_endpoints(kind)
        port = endpoints[0][1] if endpoints and endpoints[0][1] else STANDARD_PORTS[kind]
        out.append(ClientService(kind, protocol, port, implicit))
    return tuple(out)


class _Refusal(Exception):
    """A request answered with an error; `message` is fixed text, never the client's input."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def handles(path: str) -> bool:
    """Whether `path` is one of this module's (so the web layer can route to `handle`)."""
    lowered = path.lower()
    return lowered in _ROUTES or lowered.startswith(AUTODISCOVER_JSON_V1)


def handle(request: Request, config: Config, hosted: Collection[str], *,
           served: Collection[str] | None = None) -> Response:
    """Answer one autoconfiguration request. `hosted`: the store's domains (canonical form,
    Directory.domains); `served`: the listener kinds to offer (default `served_kinds`)."""
    context = _Context(config, frozenset(hosted), client_services(config, served))
    lowered = request.path.lower()
    route = _ROUTES.get(lowered)
    if route is None and lowered.startswith(AUTODISCOVER_JSON_V1):
        route = _autodiscover_json
    if route is None:
        return _text(404, "not found")
    try:
        return route(request, context)
    except _Refusal as refusal:
        return _text(refusal.status, refusal.message)


@dataclass(frozen=True, slots=True)
class _Context:
    config: Config
    hosted: frozenset[str]
    services: tuple[ClientService, ...]

    def address(self, text: str) -> str:
        """An untrusted address → its canonical key, for a hosted domain only (else 404)."""
        if not _xml_safe(text):
            raise _Refusal(400, "invalid e-mail address")
        try:
            key = canonical_address(text)
        except InvalidInput:
            raise _Refusal(400, "invalid e-mail address") from None
        if key.rpartition("@")[2] not in self.hosted:
            raise _Refusal(404, "no mail service for this address here")
        return key


# --- Thunderbird ----------------------------------------------------------------------------------

def _thunderbird(request: Request, context: _Context) -> Response:
    _require_method(request, "GET", "HEAD")
    params = _query(request.query)
    given = params.get("emailaddress")
    if given is not None:
        domain = context.address(given).rpartition("@")[2]
    else:
        domain = _host_domain(request.host, context.hosted)
    if not context.services:
        raise _Refusal(404, "this server offers no mail client service")
    return Response(200, XML_TYPE, thunderbird_config(domain, context.config.hostname,
                                                      context.services))


def thunderbird_config(domain: str, hostname: str, services: Iterable[ClientService]) -> bytes:
    """The clientConfig document: every offered service in preference order, the user name
    left as Thunderbird's %EMAILADDRESS% placeholder (our login names are the addresses)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for service in services:
        tag = "incomingServer" if service.incoming else "outgoingServer"
        server = ET.SubElement(provider, tag, type=service.protocol)
        ET.SubElement(server, "hostname").text = hostname
        ET.SubElement(server, "port").text = str(service.port)
        ET.SubElement(server, "socketType").text = "SSL" if service.implicit_tls else "STARTTLS"
        ET.SubElement(server, "username").text = "%EMAILADDRESS%"
        # Cleartext inside TLS: the only password mechanism our servers take (PLAIN/LOGIN).
        ET.SubElement(server, "authentication").text = "password-cleartext"
    return _xml(root)


def _host_domain(host: str, hosted: frozenset[str]) -> str:
    """The mail domain a Host header names: DOMAIN itself (the well-known form) or
    autoconfig.DOMAIN. 404 unless we host it."""
    if len(host) > MAX_HOST or not _xml_safe(host):
        raise _Refusal(400, "invalid Host")
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit():
        name = host  # no port (an IPv6 literal never names a mail domain anyway)
    try:
        domain = normalize_domain(name)
    except AddressError:
        raise _Refusal(404, "no mail service for this domain here") from None
    for candidate in (domain, domain.removeprefix("autoconfig.")):
        if candidate in hosted:
            return candidate
    raise _Refusal(404, "no mail service for this domain here")


# --- Autodiscover POX -----------------------------------------------------------------------------

def _autodiscover_pox(request: Request, context: _Context) -> Response:
    _require_method(request, "POST")
    if len(request.body) > MAX_POX_BODY:
        raise _Refusal(413, "request too large")
    try:
        fields = parse_pox_request(request.body)
    except PoxRequestError:
        return Response(400, POX_TYPE, autodiscover_error(POX_INVALID_REQUEST, "Invalid Request"))
    schema = fields.get("AcceptableResponseSchema", POX_OUTLOOK_NS).strip()
    if schema != POX_OUTLOOK_NS:
        # An ActiveSync device asking for "mobilesync" settings: nothing here serves those.
        return Response(200, POX_TYPE, autodiscover_error(POX_NO_PROVIDER,
                                                          "Provider is not available"))
    if "EMailAddress" not in fields:
        return Response(400, POX_TYPE, autodiscover_error(POX_INVALID_REQUEST, "Invalid Request"))
    address = context.address(fields["EMailAddress"].strip())
    return Response(200, POX_TYPE, autodiscover_response(address, context.config.hostname,
                                                         context.services))


def autodiscover_response(address: str, hostname: str,
                          services: Iterable[ClientService]) -> bytes:
    """An Outlook "settings" answer: one Protocol per offered service, implicit TLS first
    (Outlook takes the first of each Type). Encryption SSL is implicit TLS, TLS is STARTTLS;
    SSL stays "on" in both (the login is protected either way); SPA (NTLM) off."""
    # The two default namespaces are written as Exchange writes them: plain `xmlns`
    # attributes holding our constants (ElementTree would invent ns0/ns1 prefixes otherwise,
    # and registering a default prefix would change every ElementTree user in the process).
    root = ET.Element("Autodiscover", xmlns=POX_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=POX_OUTLOOK_NS)
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    for service in services:
        protocol = ET.SubElement(account, "Protocol")
        for name, text in (
                ("Type", service.protocol.upper()),
                ("Server", hostname),
                ("Port", str(service.port)),
                ("DomainRequired", "off"),
                ("LoginName", address),
                ("SPA", "off"),
                ("SSL", "on"),
                ("Encryption", "SSL" if service.implicit_tls else "TLS"),
                ("AuthRequired", "on")):
            ET.SubElement(protocol, name).text = text
    return _xml(root)


def autodiscover_error(code: int, message: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=POX_RESPONSE_NS)
    error = ET.SubElement(ET.SubElement(root, "Response"), "Error")
    ET.SubElement(error, "ErrorCode").text = str(code)
    ET.SubElement(error, "Message").text = message
    ET.SubElement(error, "DebugData")
    return _xml(root)


class PoxRequestError(ValueError):
    """A POX request body that is not well-formed, too deep, or declares a DTD."""


_POX_FIELDS: Final = ("EMailAddress", "AcceptableResponseSchema")


def parse_pox_request(body: bytes) -> dict[str, str]:
    """The text of Autodiscover/Request/EMailAddress and …/AcceptableResponseSchema.

    Parsed with expat directly, refusing any DOCTYPE: entities can only be declared in one, so
    no entity expansion (billion laughs) and no external entity can happen, and nothing else
    in a request needs a DTD. Element names are compared by local name, whatever namespace a
    client uses. The caller bounds the size (MAX_POX_BODY)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    path: list[str] = []
    found: dict[str, list[str]] = {}

    def refuse_dtd(*_args: object) -> None:
        raise PoxRequestError("a DOCTYPE is not accepted")

    def start(name: str, _attrs: dict[str, str]) -> None:
        path.append(name.rpartition(" ")[2])
        if len(path) > MAX_POX_DEPTH:
            raise PoxRequestError("nested too deep")
        if path[0] != "Autodiscover":
            raise PoxRequestError("not an Autodiscover request")
        if len(path) == 3 and path[1] == "Request" and path[2] in _POX_FIELDS:
            if path[2] in found:
                raise PoxRequestError(f"{path[2]} given twice")
            found[path[2]] = []

    def end(_name: str) -> None:
        path.pop()

    def text(data: str) -> None:
        if len(path) == 3 and path[1] == "Request" and path[2] in found:
            found[path[2]].append(data)

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise PoxRequestError(f"not well-formed XML: {exc}") from None
    return {name: "".join(parts) for name, parts in found.items()}


# --- Autodiscover JSON v2 -------------------------------------------------------------------------

def _autodiscover_json(request: Request, context: _Context) -> Response:
    """Outlook's first question: where is the Autodiscover service for this protocol? Only
    AutodiscoverV1 (the POX service above) has an answer; every other protocol (ActiveSync,
    Ews, Rest, …) gets Exchange Online's 400 InvalidProtocol, so Outlook falls back to POX or
    IMAP settings instead of trying a service that does not exist."""
    _require_method(request, "GET", "HEAD")
    params = _query(request.query, case_insensitive=True)
    email = params.get("email")
    lowered = request.path.lower()
    if lowered.startswith(AUTODISCOVER_JSON_V1):
        if len(request.path) > MAX_PATH:
            raise _Refusal(400, "request too large")
        try:
            email = unquote(request.path[len(AUTODISCOVER_JSON_V1):], errors="strict")
        except UnicodeDecodeError:
            raise _Refusal(400, "invalid e-mail address") from None
    if email is None:
        return _json(400, {"ErrorCode": "InvalidUser",
                           "ErrorMessage": "An Email parameter is required."})
    try:
        context.address(email)
    except _Refusal as refusal:
        code = "InvalidUser" if refusal.status == 400 else "NotFound"
        return _json(refusal.status, {"ErrorCode": code, "ErrorMessage": refusal.message})
    if params.get("protocol", "").casefold() != JSON_PROTOCOL.casefold():
        return _json(400, {"ErrorCode": "InvalidProtocol",
                           "ErrorMessage": "The given protocol value is invalid. Supported "
                                           f"values are '{JSON_PROTOCOL}'."})
    return _json(200, {"Protocol": JSON_PROTOCOL,
                       "Url": f"https://{context.config.hostname}{AUTODISCOVER_XML}"})


def _json(status: int, value: dict[str, str]) -> Response:
    return Response(status, JSON_TYPE, json.dumps(value, ensure_ascii=True).encode("ascii"))


# --- Apple configuration profile ------------------------------------------------------------------

def _mobileconfig(request: Request, context: _Context) -> Response:
    _require_method(request, "GET", "HEAD")
    given = _query(request.query).get("emailaddress")
    if given is None:
        raise _Refusal(400, "an emailaddress parameter is required")
    address = context.address(given)
    profile = mobileconfig(address, context.config.hostname, context.services)
    if profile is None:
        raise _Refusal(404, "this server offers no incoming and outgoing mail service")
    return Response(200, MOBILECONFIG_TYPE, profile)


def mobileconfig(address: str, hostname: str,
                 services: Iterable[ClientService]) -> bytes | None:
    """A profile (signed later, by the web layer) with one com.apple.mail.managed payload
    (the most preferred incoming and outgoing service), or None when either is missing.
    UUIDs are uuid5 of the server and the address: fetching the profile again replaces the
    installed one rather than adding a second account."""
    offered = list(services)
    incoming = next((s for s in offered if s.incoming), None)
    outgoing = next((s for s in offered if not s.incoming), None)
    if incoming is None or outgoing is None:
        return None
    domain = address.rpartition("@")[2]
    profile_uuid = uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_DNS, hostname), f"mailto:{address}")
    account_uuid = uuid.uuid5(profile_uuid, "com.apple.mail.managed")
    prefix = ".".join(reversed(hostname.split("."))) + ".mailhouse"
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.mail.{account_uuid}",
        "PayloadUUID": str(account_uuid).upper(),
        "PayloadDisplayName": f"{domain} mail",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": hostname,
        "IncomingMailServerPortNumber": incoming.port,
        # Apple Mail negotiates STARTTLS on a port without implicit TLS when this is true.
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    top = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.{profile_uuid}",
        "PayloadUUID": str(profile_uuid).upper(),
        "PayloadDisplayName": f"{domain} mail: {address}",
        "PayloadDescription": f"Mail account {address} on {hostname}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plist_dumps(top)


# --- shared pieces --------------------------------------------------------------------------------

# XML 1.0 §2.2 Char: what a document may contain at all. ElementTree would write anything else
# (a control character, a lone surrogate) into a document no parser accepts.
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(text: str) -> bool:
    return _NOT_XML_CHAR.search(text) is None


def _xml(root: ET.Element) -> bytes:
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    assert isinstance(data, bytes)  # an encoding other than "unicode" gives bytes
    return data


def _text(status: int, message: str) -> Response:
    return Response(status, TEXT_TYPE, (message + "\n").encode("utf-8"))


def _require_method(request: Request, *allowed: str) -> None:
    if request.method.upper() not in allowed:
        raise _Refusal(405, "method not allowed (" + ", ".join(allowed) + ")")


def _query(query: str, *, case_insensitive: bool = False) -> dict[str, str]:
    """A query string's parameters; 400 when too long, not UTF-8, or a name repeats (which of
    two addresses would be meant?)."""
    if len(query) > MAX_QUERY or not _xml_safe(query):
        raise _Refusal(400, "invalid query")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:  # UnicodeDecodeError included; too many fields
        raise _Refusal(400, "invalid query") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower() if case_insensitive else name
        if key in out:
            raise _Refusal(400, "a query parameter is repeated")
        out[key] = value
    return out


_Route = Callable[[Request, _Context], Response]
_ROUTES: Final[dict[str, _Route]] = {
    THUNDERBIRD_WELL_KNOWN: _thunderbird,
    THUNDERBIRD_AUTOCONFIG_HOST: _thunderbird,
    AUTODISCOVER_XML: _autodiscover_pox,
    AUTODISCOVER_JSON: _autodiscover_json,
    MOBILECONFIG: _mobileconfig,
}
# Clients differ in case (Outlook asks for /Autodiscover/Autodiscover.xml); paths are matched
# lower-cased, so every key above must be lower case.
assert all(path == path.lower() for path in _ROUTES)
