"""service/profile_signing.py: the Apple profile signed with the server's certificate chain,
re-read after a renewal, left unsigned (and said once) when the key cannot be used."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
import trustme

from mailhouse.service.profile_signing import ProfileSigner

PROFILE = b'<?xml version="1.0"?><plist version="1.0"><dict/></plist>\n'


def verify(signed: bytes, ca: Path) -> bytes:
    done = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-CAfile", str(ca),
                           "-purpose", "any"], input=signed, capture_output=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def issue(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    leaf = ca.issue_cert("mx.example.test")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def test_signed_by_the_chain_and_again_after_a_renewal(tmp_path: Path) -> None:
    ca = trustme.CA()
    intermediate = ca.create_child_ca()  # a chain: the device needs the intermediate too
    roots = tmp_path / "roots.pem"
    ca.cert_pem.write_to_path(str(roots))
    cert, key = issue(intermediate, tmp_path)
    signer = ProfileSigner(lambda: (cert, key))
    assert verify(signer.sign(PROFILE), roots) == PROFILE

    other = trustme.CA()  # a renewal by another CA: the file changes, the signature follows
    os.utime(cert, ns=(1, 1))
    issue(other, tmp_path)
    other_roots = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_roots))
    assert verify(signer.sign(PROFILE), other_roots) == PROFILE


def test_no_usable_pair_leaves_the_profile_unsigned(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cert, key = issue(trustme.CA(), tmp_path)
    key.write_text("not a key\n")
    signer = ProfileSigner(lambda: (cert, key))
    with caplog.at_level(logging.WARNING):
        assert signer.sign(PROFILE) == PROFILE
        assert signer.sign(PROFILE) == PROFILE
    assert caplog.text.count("event=autoconfig.profile_unsigned") == 1  # once per file
    missing = ProfileSigner(lambda: (tmp_path / "none.pem", key))
    assert missing.sign(PROFILE) == PROFILE
