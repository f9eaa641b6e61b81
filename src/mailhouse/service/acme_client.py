"""One certificate issuance with an ACME CA (RFC 8555), through the `acme` library: account
(§7.3), order (§7.4), challenges (§8.3 HTTP-01, RFC 8737 TLS-ALPN-01), finalize with a fresh
key and CSR, download the chain, install the pair (acme_files.py).

Everything here blocks (the library speaks HTTP through `requests`): the renewal service runs
`issue` in a worker thread, never on the event loop.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from mailhouse import __version__
from mailhouse.private_files import write_private
from mailhouse.service.acme_challenges import ChallengeBoard
from mailhouse.service.acme_files import account_key_pem, acme_dir, install_pair

log = logging.getLogger("mailhouse.acme")

NETWORK_TIMEOUT: Final = 30  # seconds per HTTP request to the CA
ORDER_DEADLINE: Final = 180.0  # seconds from answering the challenges to the issued chain
USER_AGENT: Final = f"mailhouse/{__version__}"


class AcmeError(Exception):
    """Issuance failed; the message says why in one line (it is logged and shown)."""


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    """What one issuance needs (from `[acme]`, see config.py)."""

    directory: str
    names: tuple[str, ...]
    challenges: tuple[str, ...]
    data_dir: Path
    contact: str | None = None
    ca_bundle: Path | None = None
    order_deadline: float = ORDER_DEADLINE


class _TlsAlpn01Response(challenges.ChallengeResponse):
    """RFC 8737 §3: the client answers with an empty object, as for HTTP-01. The `acme`
    library no longer ships this challenge's classes, so the response is made here."""

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # Without fields the object is an empty mapping, which the library would send as a
        # POST-as-GET (empty payload) instead of the `{}` that answers the challenge.
        return True


def issue(settings: AcmeSettings, board: ChallengeBoard) -> tuple[Path, Path]:
    """Obtain and install a certificate for `settings.names`; returns the installed (cert,
    key). Raises AcmeError; the installed pair is untouched then."""
    try:
        return _issue(settings, board)
    except AcmeError:
        raise
    except errors.ValidationError as exc:
        raise AcmeError("challenge failed: " + _validation_problems(exc)) from exc
    except messages.Error as exc:
        raise AcmeError(f"the CA refused: {exc}") from exc
    except errors.TimeoutError as exc:
        raise AcmeError("the CA did not validate or issue in time") from exc
    except Exception as exc:  # requests' connection errors, bad answers, files
        raise AcmeError(f"{type(exc).__name__}: {exc}"[:500]) from exc
    finally:
        board.clear()


def _issue(settings: AcmeSettings, board: ChallengeBoard) -> tuple[Path, Path]:
    account_key = JWKEC(key=serialization.load_pem_private_key(
        account_key_pem(settings.data_dir), password=None))
    acme_client = _client(settings, account_key)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    csr_pem = crypto_util.make_csr(key_pem, list(settings.names))
    order = acme_client.new_order(csr_pem)
    log.info("event=acme.order names=%s", ",".join(settings.names))
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue  # validated recently, the CA remembers (RFC 8555 §7.1.4)
        challb, response = _answer(authz, settings.challenges, account_key, board)
        acme_client.answer_challenge(challb, response)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=settings.order_deadline)
    order = acme_client.poll_and_finalize(order, deadline)
    if not order.fullchain_pem:
        raise AcmeError("the CA issued no certificate")
    cert, key_path = install_pair(settings.data_dir, order.fullchain_pem.encode(), key_pem)
    log.info("event=acme.issued names=%s cert=%s", ",".join(settings.names), cert)
    return cert, key_path


def _client(settings: AcmeSettings, account_key: JWKEC) -> client.ClientV2:
    net = client.ClientNetwork(account_key, alg=ES256, user_agent=USER_AGENT,
                               timeout=NETWORK_TIMEOUT)
    if settings.ca_bundle is not None:
        # requests takes a CA file where the library's flag is: a private or test CA.
        net.verify_ssl = cast(bool, str(settings.ca_bundle))
    directory = client.ClientV2.get_directory(settings.directory, net)
    acme_client = client.ClientV2(directory, net)
    contact = (f"mailto:{settings.contact}",) if settings.contact else ()
    account_file = acme_dir(settings.data_dir) / "account.json"
    try:
        regr = acme_client.new_account(messages.NewRegistration.from_data(
            terms_of_service_agreed=True, contact=contact) if contact else
            messages.NewRegistration(terms_of_service_agreed=True))
    except errors.ConflictError as exc:  # RFC 8555 §7.3.1: this key has an account already
        regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        net.account = regr
    write_private(acme_dir(settings.data_dir), account_file,
                  json.dumps({"url": regr.uri, "directory": settings.directory}).encode())
    return acme_client


def _answer(authz: messages.AuthorizationResource, preferred: tuple[str, ...],
            account_key: JWKEC, board: ChallengeBoard
            ) -> tuple[messages.ChallengeBody, challenges.ChallengeResponse]:
    """Publish the answer to the first offered challenge type in `preferred` order."""
    name = authz.body.identifier.value
    offered = {cast(str, challb.chall.typ if not isinstance(
        challb.chall, challenges.UnrecognizedChallenge) else challb.chall.jobj.get("type")):
        challb for challb in authz.body.challenges}
    for kind in preferred:
        challb = offered.get(kind)
        if challb is None:
            continue
        if kind == "http-01" and isinstance(challb.chall, challenges.HTTP01):
            response, validation = challb.chall.response_and_validation(account_key)
            board.put_http(challb.chall.encode("token"), validation)
            return challb, response
        if kind == "tls-alpn-01":
            token = _token(challb.chall)
            board.put_alpn(name, f"{token}.{_thumbprint(account_key)}")
            return challb, _TlsAlpn01Response()
    raise AcmeError(f"{name}: the CA offers {', '.join(sorted(offered))}; configured "
                    f"acme.challenges are {', '.join(preferred)}")


def _token(chall: challenges.Challenge) -> str:
    if isinstance(chall, challenges.UnrecognizedChallenge):
        token = chall.jobj.get("token")
    else:
        token = cast(Any, chall).encode("token")
    if not isinstance(token, str):
        raise AcmeError("the CA sent a challenge without a token")
    return token


def _thumbprint(account_key: JWKEC) -> str:
    """RFC 8555 §8.1: base64url(SHA-256 JWK thumbprint, RFC 7638)."""
    return b64encode(account_key.thumbprint(hash_function=hashes.SHA256)).decode()


def _validation_problems(exc: errors.ValidationError) -> str:
    problems = []
    for authzr in exc.failed_authzrs:
        for challb in authzr.body.challenges:
            if challb.error is not None:
                problems.append(f"{authzr.body.identifier.value}: {challb.error}")
    return "; ".join(problems)[:500] or "the CA did not say why"
