"""Where ACME's files live under data_dir/acme/, and how a new pair is installed so that no
reader ever sees a certificate with the wrong key.

    account-key.pem        the ACME account's key (EC P-256, mode 0600, made once)
    account.json           the account's URL at the CA (a cache: the key finds it again)
    certs/<serial>/        one issued pair: cert.pem (leaf + chain) and key.pem
    current -> certs/<serial>   the pair the server serves (a symbolic link)
    state.json             the last attempt, its error and the next check (doctor, `cert status`)

Two files cannot be replaced together atomically, but a symbolic link can be: each pair is
written whole into its own new directory, then `current` is renamed over in one step (the
certbot layout, for the same reason). The previous pair stays until the next install.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailhouse.private_files import write_private

ACME_DIR: Final = "acme"
CURRENT: Final = "current"
KEPT_PAIRS: Final = 2  # the one served and the one before it
MAX_STATE_FILE: Final = 64 * 1024  # octets of state.json read back


def acme_dir(data_dir: Path) -> Path:
    return data_dir / ACME_DIR


def current_pair(data_dir: Path) -> tuple[Path, Path] | None:
    """(cert, key) through the `current` link, or None before the first issuance."""
    base = acme_dir(data_dir) / CURRENT
    cert, key = base / "cert.pem", base / "key.pem"
    return (cert, key) if cert.exists() and key.exists() else None


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def account_key_pem(data_dir: Path) -> bytes:
    """The account key, made on first use. Losing it only costs a new account (the CA's
    rate limits allow that), so it is not backed up anywhere else."""
    directory = _ensure_dir(acme_dir(data_dir))
    path = directory / "account-key.pem"
    if path.exists():
        return path.read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private(directory, path, pem)
    return pem


def install_pair(data_dir: Path, chain_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write the pair into its own directory, then point `current` at it in one rename."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    base = _ensure_dir(acme_dir(data_dir))
    certs = _ensure_dir(base / "certs")
    name = f"{leaf.serial_number:x}"
    pair_dir = certs / name
    if pair_dir.exists():  # a retry after a crash between write and link
        shutil.rmtree(pair_dir)
    pair_dir.mkdir(mode=0o700)
    write_private(pair_dir, pair_dir / "key.pem", key_pem)
    write_private(pair_dir, pair_dir / "cert.pem", chain_pem)
    link_temp = base / f".{CURRENT}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        link_temp.unlink()
    os.symlink(Path("certs") / name, link_temp)
    os.replace(link_temp, base / CURRENT)
    _prune(certs, keep=name)
    return pair_dir / "cert.pem", pair_dir / "key.pem"


def _prune(certs: Path, keep: str) -> None:
    pairs = sorted((p for p in certs.iterdir() if p.is_dir() and p.name != keep),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in pairs[KEPT_PAIRS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def not_after(cert_path: Path) -> datetime.datetime | None:
    """The leaf's expiry, or None when there is no readable certificate."""
    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class RenewalState:
    """What the renewal service last did: read by the doctor, `cert status` and the admin.
    Times are Unix seconds; None: not yet."""

    not_after: float | None = None  # the served ACME certificate's expiry
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None  # of the last attempt; None when it succeeded
    next_check: float | None = None
    failures: int = 0  # attempts failed in a row

    @property
    def failing(self) -> bool:
        return self.last_error is not None


def save_state(data_dir: Path, state: RenewalState) -> None:
    directory = _ensure_dir(acme_dir(data_dir))
    write_private(directory, directory / "state.json",
                  json.dumps(asdict(state), sort_keys=True).encode())


def load_state(data_dir: Path) -> RenewalState | None:
    """The saved state, or None (never saved, unreadable, or not ours)."""
    try:
        with open(acme_dir(data_dir) / "state.json", "rb") as fh:
            raw = json.loads(fh.read(MAX_STATE_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    times = ("not_after", "last_attempt", "last_success", "next_check")
    if any(not isinstance(raw.get(k), int | float | None) or isinstance(raw.get(k), bool)
           for k in times):
        return None
    error, failures = raw.get("last_error"), raw.get("failures", 0)
    if not isinstance(error, str | None) or not isinstance(failures, int):
        return None
    return RenewalState(**{k: raw.get(k) for k in times}, last_error=error, failures=failures)
