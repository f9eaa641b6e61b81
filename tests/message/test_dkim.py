"""DKIM keys and signatures, checked by dkimpy's verifier against the very records
`dns_records` tells the operator to publish."""

from __future__ import annotations

import logging
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import mailhouse.message.dkim as dkim_module
from mailhouse.message.dkim import (
    TXT_CHUNK,
    DkimError,
    DkimKey,
    DkimKeys,
    DkimSigner,
    dns_records,
    sign_with,
)

DAY = 1_767_225_600.0  # 2026-01-01 00:00 UTC
MESSAGE = (b"Received: from client by mx.example.org\r\n"
           b"From: Alice <alice@example.org>\r\n"
           b"To: Bob <bob@example.net>\r\n"
           b"Cc: carol@example.net\r\n"
           b"Subject: Lunch\r\n"
           b"Date: Thu, 1 Jan 2026 12:00:00 +0000\r\n"
           b"Message-ID: <lunch.1@example.org>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"\r\n"
           b"Noon at the usual place?\r\n")

DnsFunc = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    """One directory with keys for example.org, made once per module (RSA keygen is slow)."""
    store = DkimKeys(tmp_path_factory.mktemp("data") / "dkim", clock=lambda: DAY)
    store.ensure("example.org")
    return store


@pytest.fixture
def fast_rsa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of key-file handling reuse one RSA key instead of making new ones."""
    one = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    monkeypatch.setattr(dkim_module.rsa, "generate_private_key", lambda **_: one)


def dns_of(records: list[str]) -> DnsFunc:
    """A dkimpy dnsfunc answering TXT queries from zone-file lines."""
    txt: dict[str, bytes] = {}
    for line in records:
        match = re.fullmatch(r"(\S+) IN TXT (.*)", line)
        if match:
            strings = re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(2))
            assert all(len(s) <= TXT_CHUNK for s in strings)
            txt[match.group(1)] = "".join(strings).encode("ascii")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return txt.get(name.decode("ascii"))

    return dnsfunc


def verify(message: bytes, dnsfunc: DnsFunc, index: int) -> bool:
    """The index-th signature (0 = topmost) verifies; dkimpy raises for some failures."""
    try:
        return bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False


@pytest.fixture(scope="module")
def dnsfunc(keys: DkimKeys) -> DnsFunc:
    return dns_of(dns_records("example.org", "mx.example.org", keys.keys("example.org")))


# --- keys -------------------------------------------------------------------------------------

def test_keys_are_made_once_and_reused(keys: DkimKeys) -> None:
    made = keys.keys("example.org")
    assert [(k.key_type, k.selector, k.algorithm) for k in made] == [
        ("rsa", "mh-rsa-20260101", "rsa-sha256"),
        ("ed25519", "mh-ed25519-20260101", "ed25519-sha256")]
    assert made[0].private_key.key_size == 2048  # type: ignore[union-attr]
    records = [k.record() for k in made]
    # Again, from another instance (another process) and another day: the same keys.
    again = DkimKeys(keys.directory, clock=lambda: DAY + 86400 * 30).ensure("EXAMPLE.org.")
    assert [k.record() for k in again] == records
    assert sorted(p.name for p in (keys.directory / "example.org").iterdir()) == [
        "mh-ed25519-20260101.pem", "mh-rsa-20260101.pem"]


def test_key_files_are_private(keys: DkimKeys) -> None:
    domain_dir = keys.directory / "example.org"
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(domain_dir.stat().st_mode) == 0o700
    for path in domain_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(keys.keys("example.org"))


def test_no_keys_no_signature(tmp_path: Path) -> None:
    store = DkimKeys(tmp_path / "dkim")
    assert store.keys("example.net") == []
    assert DkimSigner(store).sign(MESSAGE, "example.net") == b""
    assert DkimSigner(store).sign(MESSAGE, "[192.0.2.1]") == b""
    with pytest.raises(ValueError):
        store.ensure("not a domain")


def test_keys_made_elsewhere_are_seen_and_removed(tmp_path: Path, fast_rsa: None) -> None:
    server = DkimKeys(tmp_path / "dkim")
    assert server.keys("example.net") == []  # cached as "none"
    DkimKeys(tmp_path / "dkim").ensure("example.net")  # the CLI, in another process
    assert [k.key_type for k in server.keys("example.net")] == ["rsa", "ed25519"]
    assert server.remove("example.net") is True
    assert server.keys("example.net") == []
    assert server.remove("example.net") is False


def test_concurrent_ensure_makes_one_key_per_type(tmp_path: Path, fast_rsa: None) -> None:
    results: list[list[DkimKey]] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        results.append(DkimKeys(tmp_path / "dkim").ensure("example.net"))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert all(r == results[0] for r in results)
    assert len(list((tmp_path / "dkim" / "example.net").iterdir())) == 2


def test_operator_supplied_and_broken_key_files(tmp_path: Path, fast_rsa: None,
                                                caplog: pytest.LogCaptureFixture) -> None:
    domain_dir = tmp_path / "dkim" / "example.net"
    domain_dir.mkdir(parents=True)
    # An OpenDKIM-style PKCS#1 key under its old selector is used as is.
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (domain_dir / "default.pem").write_bytes(old.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    # Garbage is skipped with a warning; ensure() will not overwrite it.
    (domain_dir / "mh-ed25519-20260101.pem").write_bytes(b"not a key")
    (domain_dir / "notes.txt").write_text("ignored")
    store = DkimKeys(tmp_path / "dkim", clock=lambda: DAY)
    with caplog.at_level(logging.WARNING, logger="mailhouse.dkim"):
        assert [k.selector for k in store.keys("example.net")] == ["default"]
    assert "dkim.key_unusable" in caplog.text
    with pytest.raises(DkimError, match=r"mh-ed25519-20260101\.pem"):
        store.ensure("example.net")
    assert (domain_dir / "mh-ed25519-20260101.pem").read_bytes() == b"not a key"
    (domain_dir / "mh-ed25519-20260101.pem").unlink()
    assert [k.selector for k in store.ensure("example.net")] == [
        "default", "mh-ed25519-20260101"]  # RSA present already: only Ed25519 was made


# --- signatures -------------------------------------------------------------------------------

def test_both_signatures_verify(keys: DkimKeys, dnsfunc: DnsFunc) -> None:
    header = DkimSigner(keys).sign(MESSAGE, "example.org")
    assert header.count(b"DKIM-Signature:") == 2
    assert header.endswith(b"\r\n") and b"\n" not in header.replace(b"\r\n", b"")
    rsa_sig, ed_sig = header.split(b"DKIM-Signature:")[1:]
    assert b"a=rsa-sha256" in rsa_sig and b"s=mh-rsa-20260101" in rsa_sig
    assert b"a=ed25519-sha256" in ed_sig and b"s=mh-ed25519-20260101" in ed_sig
    for sig in (rsa_sig, ed_sig):
        tags = dict(t.split("=", 1) for t in re.sub(r"\s+", "", sig.decode()).split(";") if t)
        assert tags["c"] == "relaxed/relaxed"
        assert tags["d"] == "example.org"
        assert "l" not in tags
        assert tags["h"].split(":") == ["from", "to", "cc", "subject", "date", "message-id",
                                        "mime-version", "content-type", "from"]
    signed = header + MESSAGE
    assert verify(signed, dnsfunc, 0)  # RSA
    assert verify(signed, dnsfunc, 1)  # Ed25519
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_changes_after_signing_break_the_signatures(keys: DkimKeys, dnsfunc: DnsFunc) -> None:
    signed = DkimSigner(keys).sign(MESSAGE, "example.org") + MESSAGE
    tampered = [
        signed.replace(b"Subject: Lunch", b"Subject: Dinner"),
        signed.replace(b"To: Bob", b"To: Eve"),
        signed.replace(b"Noon", b"Midnight"),
        # A second From above the signed one: the oversigned From catches it (RFC 6376 §8.15).
        signed.replace(b"From: Alice", b"From: Mallory <m@evil.test>\r\nFrom: Alice", 1),
    ]
    for message in tampered:
        assert not verify(message, dnsfunc, 0)
        assert not verify(message, dnsfunc, 1)
    # Relaxed canonicalization: re-folding and whitespace changes by relays are fine.
    refolded = signed.replace(b"Subject: Lunch", b"Subject:   Lunch\r\n ")
    assert verify(refolded, dnsfunc, 0) and verify(refolded, dnsfunc, 1)
    # Unsigned fields may change.
    assert verify(signed.replace(b"from client", b"from elsewhere"), dnsfunc, 0)


def test_openssl_rsa_is_byte_identical_to_dkimpy(keys: DkimKeys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """PKCS#1 v1.5 is deterministic: with the clock frozen, the OpenSSL shortcut must give
    exactly dkimpy's own signature, or the replaced internals have drifted."""
    monkeypatch.setattr(dkim.time, "time", lambda: DAY)
    made = keys.keys("example.org")
    assert sign_with(MESSAGE, made) == sign_with(MESSAGE, made, openssl_rsa=False)


def test_lf_only_and_non_ascii_messages(keys: DkimKeys, dnsfunc: DnsFunc) -> None:
    message = ("From: José <josé@example.org>\nTo: bob@example.net\nSubject: Grüße\n\n"
               "Bis morgen\n").encode()
    signed = DkimSigner(keys).sign(message, "example.org") + message.replace(b"\n", b"\r\n")
    assert verify(signed, dnsfunc, 0) and verify(signed, dnsfunc, 1)


def test_unsignable_message_is_sent_unsigned(keys: DkimKeys,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mailhouse.dkim"):
        assert DkimSigner(keys).sign(b"\x00garbage header\r\n\r\nbody", "example.org") == b""
    assert "dkim.sign_failed" in caplog.text


def test_signing_from_many_threads(keys: DkimKeys, dnsfunc: DnsFunc) -> None:
    signer = DkimSigner(keys)
    failures: list[str] = []
    barrier = threading.Barrier(4)

    def run(n: int) -> None:
        barrier.wait()
        for i in range(10):
            message = MESSAGE.replace(b"Lunch", f"Lunch {n}.{i}".encode())
            signed = signer.sign(message, "example.org") + message
            if not (verify(signed, dnsfunc, 0) and verify(signed, dnsfunc, 1)):
                failures.append(f"{n}.{i}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


# --- DNS records ------------------------------------------------------------------------------

def test_dns_records(keys: DkimKeys) -> None:
    made = keys.keys("example.org")
    lines = dns_records("Example.ORG", "MX.example.org", made)
    assert lines[:2] == ["example.org. IN MX 10 mx.example.org.",
                         'example.org. IN TXT "v=spf1 mx -all"']
    rsa_line = next(line for line in lines if line.startswith("mh-rsa-20260101._domainkey."))
    assert rsa_line.startswith(
        'mh-rsa-20260101._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MIIB')
    assert rsa_line.count('" "') >= 1  # a 2048-bit key needs two strings
    ed_line = next(line for line in lines if "mh-ed25519" in line)
    assert re.fullmatch(r'mh-ed25519-20260101\._domainkey\.example\.org\. IN TXT '
                        r'"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="', ed_line)
    assert ('_dmarc.example.org. IN TXT '
            '"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"') in lines
    for srv in ("_submissions._tcp.example.org. IN SRV 0 1 465 mx.example.org.",
                "_submission._tcp.example.org. IN SRV 10 1 587 mx.example.org.",
                "_imaps._tcp.example.org. IN SRV 0 1 993 mx.example.org.",
                "_imap._tcp.example.org. IN SRV 10 1 143 mx.example.org.",
                "_pop3s._tcp.example.org. IN SRV 20 1 995 mx.example.org.",
                "_pop3._tcp.example.org. IN SRV 30 1 110 mx.example.org."):
        assert srv in lines
    assert ('_smtp._tls.example.org. IN TXT '
            '"v=TLSRPTv1; rua=mailto:postmaster@example.org"') in lines  # RFC 8460 §3
    assert lines[-2:] == ["autoconfig.example.org. IN CNAME mx.example.org.",
                          "autodiscover.example.org. IN CNAME mx.example.org."]
    assert all(len(line) < 998 and line.isascii() for line in lines)


def test_dns_records_for_an_idn_domain() -> None:
    lines = dns_records("bücher.example", "mx.example.org", [])
    assert lines[0] == "xn--bcher-kva.example. IN MX 10 mx.example.org."


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    # Threads of earlier tests may end meanwhile; only threads this test started must be gone.
    before = set(threading.enumerate())
    yield
    assert [t for t in threading.enumerate() if t not in before] == []
