"""A small authoritative DNS server for tests, serving records from a Python dict.

It answers over UDP and TCP on 127.0.0.1 (one kernel-chosen port for both) from a background
thread, so it serves asyncio code, blocking code and subprocesses (a real mailhouse pointed at it
with ``[dns] nameservers = [server.nameserver]``) alike. Network use is loopback only.

Usage::

    from tests.helpers.dns import SERVFAIL, TIMEOUT, DnsServer

    zones = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")],
                         "TXT": ["v=spf1 -all"]},
        "mx1.example.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
        "sel._domainkey.example.test": {"TXT": ["v=DKIM1; k=rsa; p=" + "A" * 400]},
        "nullmx.test": {"MX": [(0, ".")]},            # RFC 7505 null MX
        "alias.example.test": {"CNAME": "mx1.example.test"},
        "broken.test": SERVFAIL,                      # this name and every name under it
        "slow.test": TIMEOUT,                         # never answered (client times out)
    }
    with DnsServer(zones) as dns:
        config = DnsConfig(nameservers=(dns.nameserver,))   # "127.0.0.1:PORT"
        dns.set("late.test", "A", ["127.0.0.5"])            # change zones while running
        dns.set_behaviour("example.test", SERVFAIL)         # make a name fail from now on
        assert ("example.test", "MX") in dns.queries        # what was asked, in order

Record values, per type (names are case-insensitive, trailing dot optional):
- "MX": ``(preference, host)`` pairs or ``"10 mx.example.test"`` strings; host "." = null MX.
- "TXT": plain strings, split into 255-octet character-strings automatically (DKIM keys are
  longer than one); a tuple of strings gives the character-strings explicitly.
- "CNAME": one target name (a string, or a one-item list). Queries for other types follow the
  chain inside the answer, as an authoritative server does.
- any other type ("A", "AAAA", "SRV", "TLSA", "PTR" …): rdata in presentation format.

Answers: a name with records of the asked type → those records (AA set); a name that exists
(or has names below it) without that type → NOERROR with no answer (NODATA); any other name →
NXDOMAIN. `SERVFAIL`, `REFUSED` and `TIMEOUT` apply to a name and everything under it.
Answers too big for UDP (512 octets, or the query's EDNS size) come back truncated (TC), so
clients retry over TCP, as with real servers.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from enum import Enum
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

LOOPBACK = "127.0.0.1"
MAX_CNAME_CHAIN = 8
MAX_TCP_QUERIES = 100  # per TCP connection
TCP_IDLE = 5.0  # seconds a TCP connection may wait between queries
HANG_LIMIT = 60.0  # a TIMEOUT name holds a TCP connection at most this long (or until stop)


class Behaviour(Enum):
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TIMEOUT = "timeout"  # never answered


SERVFAIL = Behaviour.SERVFAIL
REFUSED = Behaviour.REFUSED
TIMEOUT = Behaviour.TIMEOUT

RecordValues = Sequence[object] | str
Zone = Mapping[str, RecordValues]


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text.lower().rstrip(".") + ".")


def _txt_rdata(value: object) -> str:
    if isinstance(value, tuple):
        parts = [str(p).encode() for p in value]
    else:
        data = str(value).encode()
        parts = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = []
    for part in parts:
        escaped = part.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        quoted.append('"' + "".join(chr(b) if 32 <= b < 127 else f"\\{b:03d}"
                                    for b in escaped) + '"')
    return " ".join(quoted)


def _rdata_texts(rdtype: str, values: RecordValues) -> list[str]:
    if isinstance(values, str):
        values = [values]
    texts = []
    for value in values:
        if rdtype == "MX" and isinstance(value, tuple):
            preference, host = str(value[0]), str(value[1])
            texts.append(f"{int(preference)} {host if host.endswith('.') else host + '.'}")
        elif rdtype == "TXT":
            texts.append(_txt_rdata(value))
        elif rdtype in ("MX", "CNAME", "NS", "PTR") and isinstance(value, str):
            texts.append(value if value.endswith(".") else value + ".")
        else:
            texts.append(str(value))
    return texts


class DnsServer:
    """See the module docstring. Start with `start()` or a `with` block; `stop()` is idempotent."""

    def __init__(self, zones: Mapping[str, Zone | Behaviour] | None = None, *,
                 ttl: int = 300) -> None:
        self.ttl = ttl
        self.host = LOOPBACK
        self.port = 0
        self._lock = threading.Lock()
        self._records: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._behaviours: dict[dns.name.Name, Behaviour] = {}
        self._queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        for name, zone in (zones or {}).items():
            if isinstance(zone, Behaviour):
                self.set_behaviour(name, zone)
            else:
                for rdtype, values in zone.items():
                    self.set(name, rdtype, values)

    # --- zone data ------------------------------------------------------------------------------
    def set(self, name: str, rdtype: str, values: RecordValues) -> None:
        """Replace the `rdtype` records of `name` (an empty list removes them)."""
        owner, kind = _name(name), dns.rdatatype.from_text(rdtype.upper())
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, kind)
        for text in _rdata_texts(rdtype.upper(), values):
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, kind, text), self.ttl)
        with self._lock:
            records = self._records.setdefault(owner, {})
            if len(rrset):
                records[kind] = rrset
            else:
                records.pop(kind, None)

    def remove(self, name: str) -> None:
        """Forget every record and behaviour of `name` (it becomes NXDOMAIN)."""
        with self._lock:
            self._records.pop(_name(name), None)
            self._behaviours.pop(_name(name), None)

    def set_behaviour(self, name: str, behaviour: Behaviour | None) -> None:
        """SERVFAIL / REFUSED / TIMEOUT for `name` and below; None restores normal answers."""
        with self._lock:
            if behaviour is None:
                self._behaviours.pop(_name(name), None)
            else:
                self._behaviours[_name(name)] = behaviour

    @property
    def queries(self) -> list[tuple[str, str]]:
        """(name, type) of every query received so far, oldest first."""
        with self._lock:
            return list(self._queries)

    @property
    def nameserver(self) -> str:
        """"127.0.0.1:PORT", the form `[dns] nameservers` takes."""
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> DnsServer:
        for _ in range(20):  # the UDP port may be taken for TCP: pick another
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((LOOPBACK, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((LOOPBACK, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            self._udp, self._tcp, self.port = udp, tcp, int(udp.getsockname()[1])
            break
        else:
            raise RuntimeError("no free port for both UDP and TCP on 127.0.0.1")
        thread = threading.Thread(target=self._serve, name=f"dns-{self.port}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for thread in list(self._threads):
            thread.join(timeout=5)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> DnsServer:
        return self.start() if not self.port else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- answering ------------------------------------------------------------------------------
    def _behaviour(self, name: dns.name.Name) -> Behaviour | None:
        for _ in range(128):  # walk up to the root
            found = self._behaviours.get(name)
            if found is not None or name == dns.name.root:
                return found
            name = name.parent()
        return None

    def _exists(self, name: dns.name.Name) -> bool:
        """The name has records, or names below it (an empty non-terminal is not NXDOMAIN)."""
        if self._records.get(name):
            return True
        return any(other.is_subdomain(name) for other, rr in self._records.items() if rr)

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to `query`, or None to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        with self._lock:
            self._queries.append((name.to_text(omit_final_dot=True).lower(),
                                  dns.rdatatype.to_text(rdtype)))
            behaviour = self._behaviour(name)
            if behaviour is Behaviour.TIMEOUT:
                return None
            if behaviour is not None:
                response.set_rcode(dns.rcode.SERVFAIL if behaviour is Behaviour.SERVFAIL
                                   else dns.rcode.REFUSED)
                return response
            current = name
            for _ in range(MAX_CNAME_CHAIN):
                records = self._records.get(current, {})
                if rdtype in records:
                    response.answer.append(records[rdtype])
                    break
                cname = records.get(dns.rdatatype.CNAME)
                if cname is None or rdtype == dns.rdatatype.CNAME:
                    if not self._exists(current):
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                response.answer.append(cname)
                current = cname[0].target
        return response

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, "udp")
            selector.register(self._tcp, selectors.EVENT_READ, "tcp")
            selector.register(self._wake_r, selectors.EVENT_READ, "stop")
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=1.0):
                    if key.data == "udp":
                        self._udp_query()
                    elif key.data == "tcp":
                        self._tcp_accept()

    def _udp_query(self) -> None:
        assert self._udp is not None
        try:
            wire, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return
        response = self.answer(query)
        if response is None:
            return
        limit = query.payload if query.edns >= 0 else 512
        try:
            data = response.to_wire(max_size=max(512, limit))
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC  # RFC 1035 §4.2.1: ask again over TCP
            data = response.to_wire()
        with contextlib.suppress(OSError):
            self._udp.sendto(data, peer)

    def _tcp_accept(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        thread = threading.Thread(target=self._tcp_session, args=(conn,), daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _tcp_session(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TCP_IDLE)
            for _ in range(MAX_TCP_QUERIES):
                try:
                    header = _recv_exactly(conn, 2)
                    if header is None:
                        return
                    wire = _recv_exactly(conn, struct.unpack("!H", header)[0])
                    if wire is None:
                        return
                    query = dns.message.from_wire(wire)
                except (OSError, dns.exception.DNSException):
                    return
                response = self.answer(query)
                if response is None:
                    self._stop.wait(HANG_LIMIT)  # hold the connection open, silent
                    return
                data = response.to_wire()
                try:
                    conn.sendall(struct.pack("!H", len(data)) + data)
                except OSError:
                    return


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

