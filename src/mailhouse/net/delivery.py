"""Remote delivery (RFC 5321 §5): MX lookup, then one SMTP transaction per host tried, until
every recipient has a definite answer or no host is left.

The rules, per recipient:
- 2xx after the final dot: DELIVERED. 5xx (MAIL, its RCPT, DATA or the final reply): PERMANENT,
  with the remote's reply for the DSN.
- 4xx, a timeout, a lost connection, a refused or failed session: try the next address or MX
  host for the recipients still open (as Postfix keeps soft-failed recipients for the next MX);
  when none is left, TEMPORARY and the queue retries later. A connection lost after the message
  went out may mean the remote has it: trying again risks a duplicate, never a loss.
- A session that never reaches MAIL (5xx greeting, EHLO and HELO refused) is the host's problem,
  not the recipient's: like Postfix's smtp_skip_5xx_greeting it counts as a 4xx, reported with
  the class changed to 4 so no DSN reads "failed" for a retry.
- Connections stay open `[delivery] connection_reuse_time` seconds after a transaction, for the
  next message to the same address (RFC 5321 §3.3: a session may carry many transactions).

It lives in net/ because it opens connections: the queue worker only knows the RemoteDelivery
seam (queue/contracts.py), and the app hands it this implementation, so queue/ never imports
net/ (DESIGN.md).
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from mailhouse.config import DeliveryConfig, DnsConfig
from mailhouse.errors import Reply
from mailhouse.model import AddressError, normalize_domain
from mailhouse.net.smtp_client import (
    ConnectionFailed,
    ConnectionPool,
    SmtpClientConnection,
    opportunistic_tls_context,
)
from mailhouse.proto.smtp.client import Transaction, TransactionDone
from mailhouse.proto.smtp.replies import as_temporary
from mailhouse.queue.contracts import OutboundMessage, RemoteDelivery, RemoteResult
from mailhouse.queue.mx import DEFAULT_DNS_TIMEOUT, MxHost, MxResolver, RouteFailure
from mailhouse.store.base import Outcome

log = logging.getLogger("mailhouse.delivery")

# Addresses tried per delivery, over all MX hosts (Postfix: smtp_mx_address_limit = 5).
MAX_ADDRESSES = 10
BAD_DOMAIN = Reply(550, "5.1.2", "Invalid recipient domain")


@dataclass(slots=True)
class _Open:
    """A recipient still without a definite answer: its latest temporary reply and where."""

    reply: Reply
    remote: str | None = None


class SmtpDelivery(RemoteDelivery):
    """RemoteDelivery over SMTP to the domain's MX hosts (queue/contracts.py).

    `hostname` is our EHLO name and, with `local_addresses` (our IPs and other names), what an MX
    must not point at (a loop). `tls_context` overrides the opportunistic, unverified default;
    `plaintext_fallback=False` makes a failed TLS handshake a temporary failure instead of a
    reconnect without STARTTLS."""

    def __init__(self, config: DeliveryConfig, dns: DnsConfig, *, hostname: str,
                 local_addresses: frozenset[str], rng: random.Random | None = None,
                 dns_timeout: float = DEFAULT_DNS_TIMEOUT,
                 tls_context: ssl.SSLContext | None = None,
                 plaintext_fallback: bool = True) -> None:
        self.config = config
        self.hostname = hostname
        self.resolver = MxResolver(dns.addresses(), hostname=hostname,
                                   local_addresses=local_addresses, rng=rng, timeout=dns_timeout)
        self.pool = ConnectionPool(config.connection_reuse_time)
        self.tls = tls_context or opportunistic_tls_context()
        self.plaintext_fallback = plaintext_fallback

    async def deliver(self, domain: str, message: OutboundMessage,
                      recipients: Sequence[str]) -> list[RemoteResult]:
        wanted = list(dict.fromkeys(recipients))  # one RCPT per address, results for each
        if not wanted:
            return []
        try:
            domain = normalize_domain(domain)
        except AddressError:
            return [RemoteResult(r, Outcome.PERMANENT, BAD_DOMAIN) for r in recipients]
        route = await self.resolver.route(domain)
        if isinstance(route, RouteFailure):
            outcome = Outcome.PERMANENT if route.reply.permanent else Outcome.TEMPORARY
            log.info("event=delivery.route queue_id=%s domain=%s outcome=%s reply=%r",
                     message.queue_id, domain, outcome.value, route.reply.text)
            return [RemoteResult(r, outcome, route.reply) for r in recipients]
        final: dict[str, RemoteResult] = {}
        still: dict[str, _Open] = {r: _Open(Reply(451, "4.4.1", "No host tried")) for r in wanted}
        tried = 0
        for host in route.hosts:
            for address in host.addresses:
                if not still or tried >= MAX_ADDRESSES:
                    break
                tried += 1
                self._record(await self._attempt(host, address, message, list(still)),
                             host, address, final, still)
        for rcpt, state in still.items():
            final[rcpt] = RemoteResult(rcpt, Outcome.TEMPORARY, as_temporary(state.reply),
                                       state.remote)
        return [final[r] for r in recipients]

    async def close(self) -> None:
        self.pool.close_all()

    # --- one address ---------------------------------------------------------------------------
    async def _attempt(self, host: MxHost, address: str, message: OutboundMessage,
                       recipients: list[str]) -> TransactionDone | ConnectionFailed:
        """One transaction at one address, on a pooled session or a new one. A pooled session
        that died unnoticed (nothing answered) is replaced by a fresh one; a failed TLS
        handshake by a plain-text one. Bounded: at most three connections."""
        port = self.config.port
        tx = Transaction(message.sender, tuple(recipients), message.size,
                         body_8bit=message.body_8bit, smtputf8=message.smtputf8)
        conn = self.pool.take(address, port)
        use_tls = True
        for _ in range(3):
            if conn is None:
                try:
                    conn = await SmtpClientConnection.open(
                        address, port, host_name=host.name, helo_name=self.hostname,
                        config=self.config, tls=self.tls if use_tls else None)
                except ConnectionFailed as exc:
                    if exc.tls_failed and use_tls and self.plaintext_fallback:
                        log.info("event=delivery.tls_fallback queue_id=%s peer=%s [%s]",
                                 message.queue_id, host.name, address)
                        use_tls = False
                        continue
                    log.info("event=delivery.session_failed queue_id=%s peer=%s [%s] reply=%r",
                             message.queue_id, host.name, address, exc.reply.text)
                    return exc
                reused = False
            else:
                reused = True
            try:
                done = await conn.send(tx, message.source)
            except BaseException:  # cancelled (shutdown) or a bug: never pool a session mid-way
                conn.abort()
                raise
            if reused and not done.replied and not conn.reusable:
                conn = None  # the idle session had died; nothing was delivered
                continue
            log.info("event=delivery.transaction queue_id=%s peer=%s tls=%r reused=%s "
                     "replies=%s", message.queue_id, conn.remote, conn.tls_info, reused,
                     ",".join(str(r.reply.code) for r in done.results))
            self.pool.put(conn)
            return done
        return ConnectionFailed(Reply(451, "4.4.2", "Could not establish a session"),
                                answered=False)

    @staticmethod
    def _record(outcome: TransactionDone | ConnectionFailed, host: MxHost, address: str,
                final: dict[str, RemoteResult], still: dict[str, _Open]) -> None:
        remote = f"{host.name} [{address}]"
        if isinstance(outcome, ConnectionFailed):
            for state in still.values():
                state.reply = outcome.reply
                state.remote = remote if outcome.answered else state.remote
            return
        for result in outcome.results:
            reply = result.reply
            if result.delivered:
                final[result.recipient] = RemoteResult(result.recipient, Outcome.DELIVERED,
                                                       reply, remote)
            elif result.permanent:
                final[result.recipient] = RemoteResult(result.recipient, Outcome.PERMANENT,
                                                       reply, remote)
            else:
                still[result.recipient] = _Open(reply, remote)
                continue
            still.pop(result.recipient, None)
