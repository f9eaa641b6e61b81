"""DKIM signing of outbound mail (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463).

Why two signatures: Ed25519 (RFC 8463) has short keys and is fast, but many receivers still
verify only RSA, so both are sent while verifiers catch up. A verifier that does not know an
algorithm ignores that signature and evaluates the other (RFC 6376 §6.1), so nothing breaks.

Keys
----
One directory per domain under `data_dir/dkim/<domain>/` (canonical A-label name), one PEM
file per key, named `<selector>.pem`; the algorithm is read from the key itself. So an
operator can drop in an existing key (e.g. from OpenDKIM) under its old selector and nothing
else changes. Files are PKCS#8, mode 0600, in a 0700 directory; written temp file → fsync →
rename → directory fsync, under an flock on the domain directory, so two processes (the CLI's
`domain add` and the server) never produce two keys for one slot, and a crash leaves either
the old state or the new one.

Selectors made here are dated: `mh-rsa-YYYYMMDD` and `mh-ed25519-YYYYMMDD` (UTC day of
creation). A selector name is not reused for a different key (except when a domain's keys
are removed and made again on the same day), because resolvers cache the old TXT record for
its TTL and a reused name would fail verification for that long; dated names
give a rotation (a new key beside the old one) a fresh name for free (RFC 6376 §3.1 intends
selectors for exactly this). Every key in the directory signs: during a rotation, the old
and the new signature travel together until the old file is removed.

RSA keys are 2048 bits: RFC 8301 §3.2 requires at least 1024 and recommends 2048; 4096-bit
records do not fit comfortably in DNS and buy nothing against today's attacks.

Signing
-------
Relaxed/relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4): survives the re-folding and
whitespace changes relays make. No l= tag (§8.2: it lets anyone append content). Signed
header fields are SIGNED_HEADERS (§5.4.1's list, minus rarely present ones), each as many
times as it occurs; From is signed once more than it occurs ("oversigning", §8.15), so a From
added later breaks the signature rather than being shown to the reader as authenticated.

dkimpy does the canonicalization, header selection and tag list. Its RSA is pure Python
(about 7 ms per signature here, holding the GIL, so a signing thread would stall the event
loop); `_OpenSslRsaDkim` replaces only that step with OpenSSL through `cryptography`
(about 0.3 ms, and it releases the GIL). RSASSA-PKCS1-v1_5 is deterministic, so the result is
byte-for-byte what dkimpy itself would produce; a test checks exactly that, and if a future
dkimpy lacks the internals used, signing falls back to dkimpy's own code.

Thread safety: a DkimSigner holds no mutable state except DkimKeys' cache, which a lock
guards; key objects are immutable and OpenSSL signs with a fresh context per call.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from mailhouse.config import STANDARD_PORTS
from mailhouse.model import AddressError, normalize_domain

log = logging.getLogger("mailhouse.dkim")

RSA_BITS: Final = 2048
RSA_MIN_BITS: Final = 1024  # RFC 8301 §3.2: smaller keys are not accepted by verifiers
SELECTOR_PREFIX: Final = "mh"
KEY_TYPES: Final = ("rsa", "ed25519")  # also the signing order: RSA first
ALGORITHMS: Final = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
# RFC 6376 §5.4.1's recommended list, restricted to fields a submitted message carries.
SIGNED_HEADERS: Final = ("from", "to", "cc", "subject", "date", "message-id", "reply-to",
                         "mime-version", "content-type", "content-transfer-encoding",
                         "in-reply-to", "references")
OVERSIGNED: Final = ("from",)
CANONICALIZATION: Final = (b"relaxed", b"relaxed")
# RFC 1035 §3.3.14: a TXT record is a list of strings of at most 255 octets each.
TXT_CHUNK: Final = 255
MX_PREFERENCE: Final = 10
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600

_KEY_FILE = re.compile(r"([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)"
                       r"\.pem\Z")
_TEMP_SUFFIX: Final = ".tmp"

KeyType = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimError(Exception):
    """A key directory problem the operator must fix; the message names the file."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One signing key of one domain."""

    domain: str
    selector: str
    key_type: KeyType
    private_key: PrivateKey = field(repr=False, compare=False)
    # The private key in the form dkimpy takes: PEM for RSA, base64 seed for Ed25519.
    dkimpy_key: bytes = field(repr=False, compare=False)

    @property
    def algorithm(self) -> str:
        return ALGORITHMS[self.key_type].decode("ascii")

    @property
    def record_name(self) -> str:
        """Where the public key is published (RFC 6376 §3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    def record(self) -> str:
        """The TXT record value (RFC 6376 §3.6.1): RSA as DER SubjectPublicKeyInfo, Ed25519
        as the bare 32-byte key (RFC 8463 §4.2)."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            der = public.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            der = public.public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw)
        return f"v=DKIM1; k={self.key_type}; p={base64.b64encode(der).decode('ascii')}"


def _canonical(domain: str) -> str:
    try:
        name = normalize_domain(domain)
    except AddressError as exc:
        raise ValueError(f"{domain!r} is not a domain name ({exc})") from None
    if name.startswith("["):
        raise ValueError(f"{domain!r}: an address literal has no DKIM keys")
    return name


class DkimKeys:
    """The key files under one directory (data_dir/dkim): made once, read many times.

    `keys()` is called for every signed message, so loaded keys are cached per domain and
    reloaded only when the directory listing (names, inodes, mtimes) changes: keys made by the
    CLI in another process are picked up by a running server at its next message."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[tuple[str, int, int], ...], tuple[DkimKey, ...]]] = {}

    def ensure(self, domain: str) -> list[DkimKey]:
        """The domain's keys, making an RSA and an Ed25519 key first if it has none of that
        type. Idempotent and safe against concurrent callers, in this process or another."""
        name = _canonical(domain)
        path = self.directory / name
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        path.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        with _locked_directory(path) as dir_fd:
            _remove_stale_temp_files(path)
            present = {key.key_type for key in _load(name, path, _listing(path))}
            for key_type in KEY_TYPES:
                if key_type not in present:
                    self._create(path, dir_fd, key_type)
        return self.keys(name)

    def keys(self, domain: str) -> list[DkimKey]:
        """The domain's keys, RSA first, then by selector; [] when it has none."""
        name = _canonical(domain)
        path = self.directory / name
        listing = _listing(path)
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] == listing:
            return list(cached[1])
        loaded = _load(name, path, listing)
        with self._lock:
            self._cache[name] = (listing, loaded)
        return list(loaded)

    def remove(self, domain: str) -> bool:
        """Delete the domain's keys (when the domain goes). True if there were any."""
        name = _canonical(domain)
        path = self.directory / name
        with self._lock:
            self._cache.pop(name, None)
        if not path.is_dir():
            return False
        shutil.rmtree(path)
        _fsync_directory(self.directory)
        return True

    def _create(self, path: Path, dir_fd: int, key_type: KeyType) -> None:
        day = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%d")
        selector = f"{SELECTOR_PREFIX}-{key_type}-{day}"
        target = path / f"{selector}.pem"
        if target.exists():
            # Present but not loadable (see the warning _load logged): never overwrite.
            raise DkimError(f"{target}: not a usable DKIM key; move it away and try again")
        private: PrivateKey = (rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
                               if key_type == "rsa" else ed25519.Ed25519PrivateKey.generate())
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        temp = path / f".{selector}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # whatever the umask
                view = memoryview(pem)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.fsync(dir_fd)
        log.info("event=dkim.key_created domain=%s selector=%s type=%s", path.name, selector,
                 key_type)


def _listing(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What identifies the directory's current keys: (name, inode, mtime) of each key file.
    A rename-replaced file has a new inode; a rewritten one a new mtime."""
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    out = []
    for entry in entries:
        if not _KEY_FILE.match(entry.name):
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        out.append((entry.name, st.st_ino, st.st_mtime_ns))
    return tuple(sorted(out))


def _load(domain: str, path: Path,
          listing: Sequence[tuple[str, int, int]]) -> tuple[DkimKey, ...]:
    """Read every key file; a file that is not a usable key is logged and skipped, so one bad
    file costs that signature, never the mail."""
    keys = []
    for name, _, _ in listing:
        file = path / name
        selector = name[: -len(".pem")]
        try:
            private = serialization.load_pem_private_key(file.read_bytes(), password=None)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError) as exc:
            log.warning("event=dkim.key_unusable path=%s reason=%r", file, str(exc))
            continue
        if isinstance(private, rsa.RSAPrivateKey) and private.key_size >= RSA_MIN_BITS:
            # dkimpy reads PKCS#1 directly (PKCS#8 only through a fallback parse).
            dkimpy_key = private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption())
            keys.append(DkimKey(domain, selector, "rsa", private, dkimpy_key))
        elif isinstance(private, ed25519.Ed25519PrivateKey):
            seed = private.private_bytes(serialization.Encoding.Raw,
                                         serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
            keys.append(DkimKey(domain, selector, "ed25519", private, base64.b64encode(seed)))
        else:
            log.warning("event=dkim.key_unusable path=%s reason=%r", file,
                        "not an RSA key of at least 1024 bits or an Ed25519 key")
    keys.sort(key=lambda k: (KEY_TYPES.index(k.key_type), k.selector))
    return tuple(keys)


@contextlib.contextmanager
def _locked_directory(path: Path) -> Iterator[int]:
    """An exclusive flock on the directory itself: held across processes and, since each
    call opens its own descriptor, across threads too."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_temp_files(path: Path) -> None:
    """Leftovers of a crash between create and rename (we hold the lock: nobody is writing)."""
    for entry in os.scandir(path):
        if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- signing ----------------------------------------------------------------------------------

# The dkimpy internals _OpenSslRsaDkim builds on (present since dkimpy 1.0).
_OPENSSL_RSA: Final = (all(hasattr(dkim, name) for name in ("fold", "RE_BTAG", "hash_headers"))
                       and hasattr(dkim.DKIM, "gen_header"))


class _OpenSslRsaDkim(dkim.DKIM):  # type: ignore[misc]  # dkimpy is untyped
    """dkimpy's signer with the RSA operation done by OpenSSL (see the module docstring).

    `gen_header` is dkimpy's own `DomainSigner.gen_header` (dkimpy 1.1) for the default,
    non-standardized case; only `RSASSA_PKCS1_v1_5_sign(h, pk)` became an OpenSSL call.
    Ed25519 goes to dkimpy unchanged."""

    def __init__(self, message: bytes, rsa_key: rsa.RSAPrivateKey | None) -> None:
        super().__init__(message, linesep=b"\r\n")
        # The key for the next rsa-sha256 signature; None: dkimpy's own RSA.
        self.rsa_key = rsa_key

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: Any, header_name: bytes, pk: Any,
                   standardize: bool = False) -> bytes:
        if self.rsa_key is None or self.signature_algorithm != b"rsa-sha256" or standardize:
            return super().gen_header(  # type: ignore[no-any-return]
                fields, include_headers, canon_policy, header_name, pk, standardize)
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        digest = self.hasher()
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            digest, canon_policy, headers, include_headers, (header_name, b" " + header_value),
            dict(fields))
        signature = self.rsa_key.sign(digest.digest(), padding.PKCS1v15(),
                                       utils.Prehashed(hashes.SHA256()))
        index = next(i for i, (tag, _) in enumerate(fields) if tag == b"b")
        fields[index] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return dkim.fold(header_value, namelen=len(header_name),  # type: ignore[no-any-return]
                         linesep=self.linesep)


def signed_header_names(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: each SIGNED_HEADERS field as often as it occurs, in message order, then
    the OVERSIGNED ones once more (RFC 6376 §5.4.2: a name listed more often than the field
    occurs signs the field's absence)."""
    names = [name.lower() for name, _ in headers if name.lower().decode(
        "ascii", "replace") in SIGNED_HEADERS]
    return names + [name.encode("ascii") for name in OVERSIGNED]


def sign_with(message: bytes, keys: Sequence[DkimKey], *, openssl_rsa: bool = True) -> bytes:
    """DKIM-Signature fields for `message`, one per key, in key order, CRLF-terminated.

    A message dkimpy cannot parse, or a key that fails, is logged and skipped: an unsigned
    message is better than an undelivered one."""
    try:
        signer = _OpenSslRsaDkim(message, None)  # parses the header section once for all keys
    except dkim.DKIMException as exc:
        log.warning("event=dkim.sign_failed domain=%s reason=%r",
                    keys[0].domain if keys else "", str(exc))
        return b""
    include = signed_header_names(signer.headers)
    out = []
    for key in keys:
        signer.rsa_key = key.private_key if (
            openssl_rsa and _OPENSSL_RSA and isinstance(key.private_key, rsa.RSAPrivateKey)
        ) else None
        try:
            out.append(signer.sign(key.selector.encode("ascii"), key.domain.encode("ascii"),
                                   key.dkimpy_key, signature_algorithm=ALGORITHMS[key.key_type],
                                   canonicalize=CANONICALIZATION, include_headers=include))
        except (dkim.DKIMException, ValueError, TypeError) as exc:
            log.warning("event=dkim.sign_failed domain=%s selector=%s reason=%r", key.domain,
                        key.selector, str(exc))
    return b"".join(out)


class DkimSigner:
    """Signs outbound mail with the keys of the signing domain."""

    def __init__(self, keys: DkimKeys) -> None:
        self._keys = keys

    def sign(self, message: bytes, domain: str) -> bytes:
        """The DKIM-Signature header field(s) to put in front of `message` (RSA first, each
        CRLF-terminated), or b"" when `domain` has no keys. CPU-bound: run it in a thread."""
        try:
            keys = self._keys.keys(domain)
        except ValueError:
            return b""
        return sign_with(message, keys) if keys else b""


# --- DNS --------------------------------------------------------------------------------------

# RFC 6186 §3 (RFC 8314 adds _submissions): the lowest priority is tried first. Implicit TLS
# ahead of STARTTLS (RFC 8314 §3 prefers it), and IMAP ahead of POP3 for a client that would
# take either.
_SRV: Final = (("_submissions", "submissions", 0), ("_submission", "submission", 10),
               ("_imaps", "imaps", 0), ("_imap", "imap", 10),
               ("_pop3s", "pop3s", 20), ("_pop3", "pop3", 30))


def dns_records(domain: str, hostname: str, keys: Sequence[DkimKey],
                offered: Collection[str] | None = None,
                mta_sts_id: str | None = None) -> list[str]:
    """Zone-file lines (RFC 1035 §5.1 master file format, absolute names) the operator
    publishes for `domain` served by `hostname`: MX, SPF, one DKIM TXT per key, DMARC, the
    TLS-RPT address, the RFC 6186 SRV records and autoconfig/autodiscover CNAMEs for mail
    clients.

    `offered`: the listener kinds the server serves (None: all). A client service not offered
    gets the RFC 6186 §4 "not available" record (target "."), so clients stop looking rather
    than trying a port where nothing answers. `mta_sts_id`: the served MTA-STS policy's id
    (service/mta_sts.py), which adds its TXT record and the `mta-sts` name (RFC 8461 §3)."""
    zone = _canonical(domain) + "."
    host = _canonical(hostname) + "."
    lines = [
        f"{zone} IN MX {MX_PREFERENCE} {host}",
        f"{zone} IN TXT {_txt('v=spf1 mx -all')}",  # RFC 7208: only our MX hosts send
    ]
    lines += [f"{key.record_name}. IN TXT {_txt(key.record())}" for key in keys]
    # RFC 7489 §6.3; quarantine rather than reject while an operator is getting started.
    lines.append(f"_dmarc.{zone} IN TXT "
                 f"{_txt(f'v=DMARC1; p=quarantine; rua=mailto:postmaster@{zone[:-1]}')}")
    lines += [f"{label}._tcp.{zone} IN SRV {priority} 1 {STANDARD_PORTS[kind]} {host}"
              if offered is None or kind in offered else f"{label}._tcp.{zone} IN SRV 0 0 0 ."
              for label, kind, priority in _SRV]
    # RFC 8460 §3: where sending servers report TLS failures delivering to us.
    lines.append(f"_smtp._tls.{zone} IN TXT "
                 f"{_txt(f'v=TLSRPTv1; rua=mailto:postmaster@{zone[:-1]}')}")
    if mta_sts_id is not None:  # RFC 8461 §3.1, and the policy's host (§3.3)
        lines.append(f"_mta-sts.{zone} IN TXT {_txt(f'v=STSv1; id={mta_sts_id}')}")
        lines.append(f"mta-sts.{zone} IN CNAME {host}")
    # Thunderbird looks up autoconfig.<domain>, Outlook autodiscover.<domain>
    # (service/autoconfig.py writes the documents; served over HTTPS by us later).
    lines.append(f"autoconfig.{zone} IN CNAME {host}")
    lines.append(f"autodiscover.{zone} IN CNAME {host}")
    return lines


def _txt(value: str) -> str:
    """A TXT value as quoted character-strings of at most 255 octets (RFC 1035 §3.3.14); a
    DKIM verifier concatenates them (RFC 6376 §3.6.2.2)."""
    data = value.encode("ascii")
    chunks = [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]
    return " ".join('"' + chunk.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for chunk in chunks)
