"""`mailhouse cert status [--json]` and `mailhouse cert renew [--force]`.

`status` shows the certificate `serve` uses (configured, from ACME, or self-signed) and what
ACME renewal last did (data_dir/acme/state.json, written by the running server's renewal task
and by `renew`). Exit 1 when renewal is failing or the certificate has expired.

`renew` runs the renewal service once, outside the server: it binds `acme.http_listen` itself
(so it answers HTTP-01 only, and only while `serve` does not hold that port; a running server
renews by itself, and SIGHUP makes it check at once), installs the pair where `serve` reads
it, and says to reload the server. Without --force it renews only inside the window.
This module is imported by __main__ (which wires `register`), so it must not import __main__.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
from collections.abc import Sequence
from typing import cast

from cryptography import x509

from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, become_data_dir_owner, error, out
from mailhouse.config import Config
from mailhouse.errors import ConfigError
from mailhouse.net.listener import bind_sockets
from mailhouse.service.acme_files import RenewalState, current_pair, load_state
from mailhouse.service.cert_info import presented_certificate


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    cert = subparsers.add_parser("cert", parents=list(parents),
                                 help="the TLS certificate and its ACME renewal")
    actions = cert.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", parents=list(parents),
                                help="the certificate in use and the last renewal attempt")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=cert_status)
    renew = actions.add_parser(
        "renew", parents=list(parents),
        help="obtain or renew the ACME certificate now (HTTP-01, while serve is stopped)")
    renew.add_argument("--force", action="store_true",
                       help="renew even when the certificate is not yet inside the window")
    renew.set_defaults(handler=cert_renew)


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cert_status(args: argparse.Namespace, config: Config) -> int:
    source, path = presented_certificate(config)
    info: dict[str, object] = {"source": source, "path": str(path) if path else None,
                               "acme_enabled": config.acme.enabled}
    expired = False
    if path is not None:
        try:
            leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except (OSError, ValueError) as exc:
            info["error"] = f"cannot read: {exc}"
        else:
            info["not_after"] = leaf.not_valid_after_utc.timestamp()
            info["issuer"] = leaf.issuer.rfc4514_string()
            expired = leaf.not_valid_after_utc <= datetime.datetime.now(datetime.UTC)
    state = load_state(config.data_dir) if config.acme.enabled else None
    if config.acme.enabled:
        info["names"] = list(config.acme.all_names(config.hostname))
        info["renewal"] = _state_json(state)
    failing = state is not None and state.failing
    if args.json:
        out(json.dumps(info, indent=2))
    else:
        _show(info, state)
    return EXIT_FAILED if failing or expired or "error" in info else EXIT_OK


def _state_json(state: RenewalState | None) -> dict[str, object] | None:
    if state is None:
        return None
    return {"last_attempt": state.last_attempt, "last_success": state.last_success,
            "last_error": state.last_error, "next_check": state.next_check,
            "failures": state.failures, "not_after": state.not_after}


def _show(info: dict[str, object], state: RenewalState | None) -> None:
    out(f"certificate   {info['source']}: {info['path'] or 'none yet (made by the first serve)'}")
    if "error" in info:
        out(f"              {info['error']}")
    if "not_after" in info:
        out(f"expires       {_iso(cast(float, info['not_after']))}  (issuer {info['issuer']})")
    if not info["acme_enabled"]:
        out("acme          off ([acme] enabled = false)")
        return
    out(f"acme names    {', '.join(cast(list[str], info['names']))}")
    if state is None:
        out("renewal       no attempt yet")
        return
    out(f"last attempt  {_iso(state.last_attempt)}")
    out(f"last success  {_iso(state.last_success)}")
    out(f"next check    {_iso(state.next_check)}")
    if state.failing:
        out(f"FAILING       {state.failures} attempt(s) in a row: {state.last_error}")


def cert_renew(args: argparse.Namespace, config: Config) -> int:
    acme = config.acme
    if not acme.enabled:
        error("cert renew: [acme] is off (set acme.enabled = true; docs/operations.md, "
              "\"Certificates from ACME\")")
        return EXIT_USAGE
    if "http-01" not in acme.challenges:
        error('cert renew answers "http-01" only (TLS-ALPN-01 needs the running server\'s '
              "web listener): add it to acme.challenges, or let `serve` renew")
        return EXIT_USAGE
    sockets: list[socket.socket] = []
    try:
        for host, port in acme.http_endpoints():  # as root, before the drop: port 80
            sockets.extend(bind_sockets(host, port))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        error(f"acme.http_listen: cannot listen on {', '.join(acme.http_listen)}: "
              f"{exc.strerror}. If `mailhouse serve` runs, it renews by itself; "
              "`systemctl reload mailhouse` (SIGHUP) makes it check now")
        return EXIT_FAILED
    try:
        become_data_dir_owner(config)
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return asyncio.run(_renew_once(config, sockets, force=args.force))


async def _renew_once(config: Config, sockets: list[socket.socket], *, force: bool) -> int:
    # Imported here: `cert status` (and every other command) starts without the ACME and
    # HTTP server libraries.
    from mailhouse.net.acme_http import challenge_app
    from mailhouse.net.http import HttpListener
    from mailhouse.service.acme_renewal import from_config

    service = from_config(config)
    listener = HttpListener(challenge_app(service.board), sockets, None, name="acme-http")
    await listener.start()
    try:
        if not force and not service.due():
            out(f"not due: the certificate expires {_iso(service.state.not_after)}, more than "
                f"{config.acme.renew_before_days} days away (--force renews anyway)")
            return EXIT_OK
        installed = await service.check(force=True)
    finally:
        await listener.stop()
    if not installed:
        error(f"cert renew: {service.state.last_error} (the current certificate stays)")
        return EXIT_FAILED
    pair = current_pair(config.data_dir)
    out(f"installed {pair[0] if pair else '?'}, valid until {_iso(service.state.not_after)}")
    out("a running server serves it after `systemctl reload mailhouse` (SIGHUP)")
    return EXIT_OK
