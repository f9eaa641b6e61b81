"""ACME without a CA: the [acme] config, the HTTP-01 answers (examples and properties), the
TLS-ALPN-01 certificate (RFC 8737 §3), the file layout, renewal's backoff and state, and the
doctor's view of a failing renewal. The exchange with a real CA: test_acme_pebble.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.config import LETS_ENCRYPT_DIRECTORY, MAX_ACME_NAMES, config_from_table
from mailhouse.errors import ConfigError
from mailhouse.net.acme_http import CHALLENGE_PREFIX, MAX_PATH, answer, install_alpn_responder
from mailhouse.net.tls import ensure_self_signed, server_context
from mailhouse.service import acme_renewal
from mailhouse.service.acme_challenges import (
    ACME_IDENTIFIER_OID,
    ACME_TLS_ALPN,
    MAX_TOKEN,
    ChallengeBoard,
    alpn_certificate,
)
from mailhouse.service.acme_client import AcmeError, AcmeSettings
from mailhouse.service.acme_files import (
    KEPT_PAIRS,
    MAX_STATE_FILE,
    RenewalState,
    account_key_pem,
    current_pair,
    install_pair,
    load_state,
    save_state,
)
from mailhouse.service.acme_renewal import RETRY_MIN, RenewalService
from mailhouse.service.doctor import Status
from tests.test_doctor_host import DAY, NOW, make_doctor, write_cert

HOST = "mx.example.test"

# --- config -----------------------------------------------------------------------------------


def load(acme: dict[str, Any], **top: Any) -> Any:
    return config_from_table({"hostname": HOST, "acme": acme, **top}, base_dir=Path("/etc/mh"))


def test_acme_is_off_by_default_with_production_defaults() -> None:
    acme = load({}).acme
    assert not acme.enabled and acme.directory == LETS_ENCRYPT_DIRECTORY
    assert acme.challenges == ("http-01",) and acme.renew_before_days == 30
    assert acme.http_listen == ("0.0.0.0:80",) and acme.all_names(HOST) == (HOST,)


def test_acme_names_and_paths() -> None:
    acme = load({"enabled": True, "extra_names": ["MTA-STS.example.test", "mx.example.test"],
                 "ca_bundle": "pebble.pem", "contact": "postmaster@example.test",
                 "challenges": ["tls-alpn-01", "http-01"]},
                web={"listen": ["0.0.0.0:443"]}).acme
    assert acme.all_names(HOST) == (HOST, "mta-sts.example.test")  # lower-cased, no repeats
    assert acme.ca_bundle == Path("/etc/mh/pebble.pem")
    assert acme.challenges == ("tls-alpn-01", "http-01")
    assert load({"names": ["a.example.test"]}).acme.all_names(HOST) == ("a.example.test",)


@pytest.mark.parametrize(("acme", "message"), [
    ({"directory": "http://ca.example/dir"}, "acme.directory: expected an https:// URL"),
    ({"directory": 5}, "acme.directory"),
    ({"contact": "no-at-sign"}, "acme.contact: expected an e-mail address"),
    ({"contact": "a@b@c"}, "acme.contact"),
    ({"contact": "@example.test"}, "acme.contact"),
    ({"names": ["*.example.test"]}, "acme.names[0]: expected a host name"),
    ({"names": "mx.example.test"}, "acme.names: expected a list"),
    ({"extra_names": ["ok.test"] * (MAX_ACME_NAMES + 1)}, "acme.extra_names"),
    ({"challenges": ["dns-01"]}, "acme.challenges"),
    ({"challenges": []}, "acme.challenges"),
    ({"renew_before_days": 0}, "acme.renew_before_days"),
    ({"renew_before_days": 366}, "acme.renew_before_days"),
    ({"check_interval": 0}, "acme.check_interval"),
    ({"http_listen": ["80"]}, "acme.http_listen[0]"),
    ({"enabled": "yes"}, "acme.enabled: expected true or false"),
    ({"renw_before_days": 3}, "did you mean acme.renew_before_days"),
])
def test_acme_config_errors_name_the_key(acme: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(acme)


def test_acme_cross_key_rules() -> None:
    with pytest.raises(ConfigError, match=re.escape("remove tls.cert")):
        load({"enabled": True}, tls={"cert": "c.pem", "key": "k.pem"})
    with pytest.raises(ConfigError, match=re.escape('acme.http_listen: the "http-01"')):
        load({"enabled": True, "http_listen": []})
    with pytest.raises(ConfigError, match=re.escape('tls-alpn-01" is answered on web.listen')):
        load({"enabled": True, "challenges": ["tls-alpn-01"]})
    with pytest.raises(ConfigError, match=re.escape("already used by web.listen")):
        load({"enabled": True, "http_listen": ["0.0.0.0:8443"]},
             web={"listen": ["0.0.0.0:8443"]})
    with pytest.raises(ConfigError, match="at most 100 names"):
        load({"enabled": True, "extra_names": [f"n{i}.test" for i in range(MAX_ACME_NAMES)]})
    with pytest.raises(ConfigError, match="hostname: 'localhost' cannot get a certificate"):
        config_from_table({"hostname": "localhost", "acme": {"enabled": True}},
                          base_dir=Path("/"))
    with pytest.raises(ConfigError, match=re.escape("acme.names: '192.0.2.1' cannot")):
        load({"enabled": True, "names": ["192.0.2.1"]})
    # Off, nothing is checked across keys.
    assert not load({"http_listen": []}, tls={"cert": "c.pem", "key": "k.pem"}).acme.enabled


# --- HTTP-01 answers --------------------------------------------------------------------------

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 §8.3's example


def test_http01_answers_only_pending_tokens() -> None:
    board = ChallengeBoard()
    board.put_http(TOKEN, TOKEN + ".thumb")
    assert answer(board, "GET", CHALLENGE_PREFIX + TOKEN) == (200, (TOKEN + ".thumb").encode())
    assert answer(board, "HEAD", CHALLENGE_PREFIX + TOKEN)[0] == 200
    assert answer(board, "POST", CHALLENGE_PREFIX + TOKEN)[0] == 405
    assert answer(board, "GET", CHALLENGE_PREFIX + "other")[0] == 404
    assert answer(board, "GET", "/")[0] == 404
    assert answer(board, "GET", CHALLENGE_PREFIX + "../../etc/passwd")[0] == 404
    assert answer(board, "GET", CHALLENGE_PREFIX + TOKEN + "/x")[0] == 404
    board.clear()
    assert answer(board, "GET", CHALLENGE_PREFIX + TOKEN)[0] == 404


def test_token_and_path_limits() -> None:
    board = ChallengeBoard()
    longest = "A" * MAX_TOKEN
    board.put_http(longest, "ka")
    assert answer(board, "GET", CHALLENGE_PREFIX + longest)[0] == 200
    assert len(CHALLENGE_PREFIX + longest) == MAX_PATH
    assert answer(board, "GET", CHALLENGE_PREFIX + longest + "A")[0] == 404
    with pytest.raises(ValueError):
        board.put_http(longest + "A", "ka")
    with pytest.raises(ValueError):
        board.put_http("a/b", "ka")


@given(st.text(max_size=400), st.sampled_from(["GET", "HEAD", "POST", "PUT"]))
def test_http01_never_answers_anything_but_a_pending_token(path: str, method: str) -> None:
    board = ChallengeBoard()
    board.put_http(TOKEN, "secret")
    status, body = answer(board, method, path)
    if status == 200:
        assert path == CHALLENGE_PREFIX + TOKEN and body == b"secret"
    else:
        assert b"secret" not in body


# --- TLS-ALPN-01 ------------------------------------------------------------------------------

def test_alpn_certificate_carries_the_key_authorization_digest() -> None:
    cert_pem, key_pem = alpn_certificate(HOST, "token.thumb")
    cert = x509.load_pem_x509_certificate(cert_pem)
    extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert extension.critical  # RFC 8737 §3
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert b"PRIVATE KEY" in key_pem


def handshake(ctx: ssl.SSLContext, name: str, alpn: list[str] | None) -> tuple[bytes, str | None]:
    """One in-memory TLS handshake against `ctx`: (served certificate DER, ALPN chosen)."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if alpn:
        client.set_alpn_protocols(alpn)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_hostname=name)
    srv = ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (cli, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = cli.getpeercert(binary_form=True)
    assert der is not None
    return der, cli.selected_alpn_protocol()


def test_alpn_responder_switches_only_for_pending_names(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path, HOST)
    ctx = server_context(cert, key)
    board = ChallengeBoard()
    install_alpn_responder(ctx, board)
    own = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number

    def serial(der: bytes) -> int:
        return x509.load_der_x509_certificate(der).serial_number

    der, alpn = handshake(ctx, HOST, [ACME_TLS_ALPN])
    assert serial(der) == own and alpn is None  # nothing pending
    board.put_alpn(HOST, "tok.thumb")
    der, alpn = handshake(ctx, HOST, [ACME_TLS_ALPN])
    assert alpn == ACME_TLS_ALPN
    challenge = x509.load_der_x509_certificate(der)
    assert challenge.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical
    der, _ = handshake(ctx, "other.example.test", ["http/1.1"])
    assert serial(der) == own  # another name: the server's certificate
    board.clear()
    der, _ = handshake(ctx, HOST, [ACME_TLS_ALPN])
    assert serial(der) == own


# --- files ------------------------------------------------------------------------------------

def test_account_key_is_made_once_and_private(tmp_path: Path) -> None:
    first = account_key_pem(tmp_path)
    assert account_key_pem(tmp_path) == first
    path = tmp_path / "acme" / "account-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "acme").stat().st_mode & 0o777 == 0o700


def test_install_switches_the_pair_in_one_step_and_prunes(tmp_path: Path) -> None:
    ca = trustme.CA()
    served = []
    for _ in range(KEPT_PAIRS + 2):
        leaf = ca.issue_cert(HOST)
        cert, _ = install_pair(tmp_path, leaf.cert_chain_pems[0].bytes(),
                                 leaf.private_key_pem.bytes())
        pair = current_pair(tmp_path)
        assert pair is not None and pair[0].resolve() == cert.resolve()
        assert pair[1].read_bytes() == leaf.private_key_pem.bytes()
        assert os.path.islink(tmp_path / "acme" / "current")
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*pair)
        served.append(cert.parent.name)
    left = sorted(p.name for p in (tmp_path / "acme" / "certs").iterdir())
    assert len(left) == KEPT_PAIRS and served[-1] in left
    assert not list((tmp_path / "acme").glob(".*tmp"))


def test_state_round_trip_and_bad_files(tmp_path: Path) -> None:
    assert load_state(tmp_path) is None
    state = RenewalState(not_after=2.0, last_attempt=1.0, last_error="boom", failures=3)
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state and state.failing
    (tmp_path / "acme" / "state.json").write_text("[1, 2]")
    assert load_state(tmp_path) is None
    (tmp_path / "acme" / "state.json").write_text("{" + " " * MAX_STATE_FILE + "}")
    assert load_state(tmp_path) is None  # read no further than the limit


# --- renewal ----------------------------------------------------------------------------------

def service(tmp_path: Path, clock: list[float], interval: float = 3600.0) -> RenewalService:
    settings = AcmeSettings(directory="https://ca.invalid/dir", names=(HOST,),
                            challenges=("http-01",), data_dir=tmp_path)
    return RenewalService(settings, 30, interval, clock=lambda: clock[0])


def test_failures_back_off_and_warn_each_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def failing(settings: AcmeSettings, board: ChallengeBoard) -> tuple[Path, Path]:
        raise AcmeError("CA unreachable")

    monkeypatch.setattr(acme_renewal, "issue", failing)
    clock = [1000.0]
    renewal = service(tmp_path, clock, interval=500.0)
    delays = []
    for _ in range(5):
        assert asyncio.run(renewal.check()) is False
        assert renewal.state.next_check is not None
        delays.append(renewal.state.next_check - clock[0])
    assert delays == [RETRY_MIN, 2 * RETRY_MIN, 4 * RETRY_MIN, 8 * RETRY_MIN, 500.0]  # capped
    assert caplog.text.count("event=acme.renewal_failed") == 5
    assert renewal.state.failures == 5 and renewal.state.last_error == "CA unreachable"
    assert RenewalService(renewal.settings, 30, 500.0).state.failures == 5  # survives restarts


def test_success_installs_resets_and_reloads(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()

    def issuing(settings: AcmeSettings, board: ChallengeBoard) -> tuple[Path, Path]:
        leaf = ca.issue_cert(HOST, not_after=datetime.datetime.now(datetime.UTC)
                             + datetime.timedelta(days=90))
        return install_pair(settings.data_dir, leaf.cert_chain_pems[0].bytes(),
                            leaf.private_key_pem.bytes())

    monkeypatch.setattr(acme_renewal, "issue", issuing)
    clock = [datetime.datetime.now(datetime.UTC).timestamp()]
    renewal = service(tmp_path, clock)
    reloads: list[int] = []
    renewal.on_installed = lambda: reloads.append(1)
    save_state(tmp_path, RenewalState(last_error="old", failures=2))
    assert asyncio.run(renewal.check()) is True  # no ACME certificate yet: due
    assert reloads == [1] and renewal.state.failures == 0 and not renewal.state.failing
    assert asyncio.run(renewal.check()) is False  # 90 days: outside the 30-day window
    clock[0] += 70 * DAY  # now inside it
    assert renewal.due()
    assert asyncio.run(renewal.check()) is True and reloads == [1, 1]


def test_the_task_runs_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    def failing(settings: AcmeSettings, board: ChallengeBoard) -> tuple[Path, Path]:
        calls.append(1)
        raise AcmeError("no")

    monkeypatch.setattr(acme_renewal, "issue", failing)

    async def scenario() -> None:
        renewal = service(tmp_path, [0.0])
        renewal.start()
        await asyncio.sleep(0.2)
        renewal.wake()  # SIGHUP: check now, not in RETRY_MIN seconds
        await asyncio.sleep(0.2)
        await renewal.stop()

    asyncio.run(scenario())
    assert len(calls) == 2


# --- doctor -----------------------------------------------------------------------------------

def test_doctor_shows_a_failing_renewal(tmp_path: Path) -> None:
    from mailhouse.service.doctor_host import check_certificate

    cert = write_cert(tmp_path, names=[HOST], not_before=NOW - DAY, not_after=NOW + 60 * DAY)
    doctor = make_doctor(tmp_path, cert=cert)
    assert check_certificate(doctor).status is Status.OK
    save_state(tmp_path / "data", RenewalState(last_attempt=NOW, last_error="challenge failed: "
                                               "connection refused", failures=4))
    result = check_certificate(doctor)
    assert result.status is Status.WARN
    assert "ACME renewal failing (4 attempts" in result.found
    assert "connection refused" in result.found and "port 80" in result.fix
    expired = write_cert(tmp_path, names=[HOST], not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    assert check_certificate(make_doctor(tmp_path, cert=expired)).status is Status.FAIL


def test_stop_does_not_wait_for_an_issuance_in_flight(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A CA that takes minutes must not hold up the server's shutdown."""
    release = threading.Event()

    def slow(settings: AcmeSettings, board: ChallengeBoard) -> tuple[Path, Path]:
        release.wait(30)
        raise AcmeError("late")

    monkeypatch.setattr(acme_renewal, "issue", slow)

    async def scenario() -> None:
        renewal = service(tmp_path, [0.0])
        renewal.start()
        await asyncio.sleep(0.1)
        await renewal.stop()

    started = time.monotonic()
    asyncio.run(scenario())  # returns without waiting for the thread
    assert time.monotonic() - started < 5
    release.set()


def test_doctor_and_cert_status_use_the_acme_pair(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from mailhouse.__main__ import main
    from mailhouse.cli_doctor import build_setup

    config_file = tmp_path / "mailhouse.toml"
    config_file.write_text(f'hostname = "{HOST}"\ndata_dir = "data"\nuser = "root"\n'
                           "[acme]\nenabled = true\n")
    config = config_from_table({"hostname": HOST, "data_dir": str(tmp_path / "data"),
                                "acme": {"enabled": True}}, base_dir=tmp_path)
    leaf = trustme.CA().issue_cert(HOST)
    cert, _ = install_pair(tmp_path / "data", leaf.cert_chain_pems[0].bytes(),
                           leaf.private_key_pem.bytes())
    setup = build_setup(config, ())
    assert setup.cert_path is not None and setup.cert_path.resolve() == cert.resolve()
    assert main(["--config", str(config_file), "cert", "status"]) == 0
    shown = capsys.readouterr().out
    assert "acme:" in shown and "no attempt yet" in shown
    save_state(tmp_path / "data", RenewalState(last_attempt=NOW, last_error="CA down",
                                               failures=2))
    assert main(["--config", str(config_file), "cert", "status"]) == 1  # failing: exit 1
    assert "FAILING       2 attempt(s) in a row: CA down" in capsys.readouterr().out
    off = tmp_path / "off.toml"
    off.write_text(f'hostname = "{HOST}"\ndata_dir = "data"\nuser = "root"\n')
    assert main(["--config", str(off), "cert", "renew"]) == 2
    assert "[acme] is off" in capsys.readouterr().err
