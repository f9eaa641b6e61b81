"""Builds the store, services and listeners from the config; starts and stops them.

One event loop (uvloop when installed) for every listening socket; blocking database and file
work runs in the store's threads. The outbound queue runs in a child process with its own loop
(`[queue] process = "separate"`, queue_process.py) or on this loop ("inline"). With
`[pop3] workers` > 1 this process binds the pop3/pop3s sockets and that many supervised
children serve them (worker_process.py); `[imap] workers` likewise for imap/imaps
(docs/decisions.md: how mailhouse uses the machine's cores).

Every process that changes mailboxes others watch (this one delivers, the queue process
bounces, IMAP and POP3 workers store and expunge) gives its store a `SocketWakeups`, so IMAP
sessions anywhere learn of the change within a second (store/wakeup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mailhouse import metrics, recent_errors, sdnotify
from mailhouse.config import LISTENER_KINDS, Config, changed_keys, load_config
from mailhouse.errors import ConfigError
from mailhouse.fdlimit import ensure_fd_limit
from mailhouse.message.dkim import DkimKeys, DkimSigner
from mailhouse.net.acme_http import challenge_app, install_alpn_responder
from mailhouse.net.http import HttpListener
from mailhouse.net.imap import ImapEndpoint
from mailhouse.net.listener import (
    ConnectionLimits,
    ConnectionPool,
    ConnectionTracker,
    Listener,
    SessionFactory,
    bind_sockets,
)
from mailhouse.net.pop3 import Pop3Endpoint
from mailhouse.net.session import Deadlines
from mailhouse.net.smtp import SmtpEndpoint, SmtpTimeouts
from mailhouse.net.tls import ensure_self_signed, reload_certificate, server_context
from mailhouse.privileges import (
    DATA_DIR_MODE,
    UMASK,
    become,
    check_data_dir_access,
    check_interpreter,
    prepare_data_dir,
    service_account,
    tighten_data_dir,
)
from mailhouse.proto.imap.config import ParserConfig as ImapParserConfig
from mailhouse.proto.imap.server import ImapServerConfig
from mailhouse.proto.pop3.server import Pop3ServerConfig
from mailhouse.proto.sasl import MECHANISMS
from mailhouse.proto.smtp.server import SmtpServerConfig
from mailhouse.queue_process import QUEUE_GRACE, Outbound, QueueSupervisor, build_outbound
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.acme_challenges import ChallengeBoard
from mailhouse.service.acme_files import current_pair
from mailhouse.service.acme_renewal import RenewalService
from mailhouse.service.acme_renewal import from_config as acme_from_config
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.imap import ENABLEABLE, ImapMailService, ImapSettings, capabilities
from mailhouse.service.inbound import InboundPolicy, InboundService
from mailhouse.service.pop3 import Pop3Service
from mailhouse.service.profile_signing import ProfileSigner
from mailhouse.service.submission import Signer, SubmissionPolicy, SubmissionService
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.service.throttle_channel import ThrottleServer
from mailhouse.service.trace_recorder import TracePruner, TraceRecorder
from mailhouse.store import open_store
from mailhouse.store.base import Store
from mailhouse.store.wakeup import SocketWakeups, Wakeups
from mailhouse.supervisor import ChildSupervisor, configure_logging
from mailhouse.web.admin import AdminContext, FaceRoutes, arm_bootstrap
from mailhouse.web.admin import build_app as build_admin_app
from mailhouse.web.api import routes as api_routes
from mailhouse.web.health import Check
from mailhouse.web.pages import admin_pages
from mailhouse.web.public import build_app as build_public_app

log = logging.getLogger("mailhouse")

DEMO_DOMAIN = "mailhouse.test"
DEMO_USER = f"demo@{DEMO_DOMAIN}"
SHUTDOWN_GRACE = 30.0  # seconds in-flight transactions get to finish on SIGTERM
# Capabilities whose listeners exist in the config but are not built yet: never bound.
NOT_BUILT: tuple[str, ...] = ()
POP3_PROTOCOLS = ("pop3", "pop3s")
# The admin listener's faces beside its probes (web/admin.py): the JSON API, the web admin.
ADMIN_FACES: tuple[FaceRoutes, ...] = (api_routes, admin_pages)  # the API before the pages
IMAP_PROTOCOLS = ("imap", "imaps")
CHILD_CLOSE_MARGIN = 5.0  # beyond SHUTDOWN_GRACE: a POP3 or IMAP worker closes its store
READY_STORE_TIMEOUT = 2.0  # seconds the store has to answer a /healthz/ready probe
# Connections are capped per service (net/listener.py ConnectionPool): its listeners, and its
# weight in the split of limits.max_connections when the config sets no total for it. IMAP
# clients hold their connections for hours (IDLE, a connection per watched folder, several
# devices per user), so IMAP gets the largest share (docs/decisions.md).
SERVICES = {"smtp": ("smtp",), "submission": ("submission", "submissions"),
            "pop3": POP3_PROTOCOLS, "imap": IMAP_PROTOCOLS}
SERVICE_WEIGHTS = {"smtp": 2, "submission": 1, "pop3": 1, "imap": 4}


def enabled_services(config: Config) -> list[str]:
    """The services (SERVICES) with at least one listener in the config."""
    return [name for name, kinds in SERVICES.items()
            if any(config.listen_endpoints(kind) for kind in kinds)]


def service_limits(config: Config, service: str) -> ConnectionLimits:
    """One service's caps: `limits.<service>_max_connections[_per_ip]`, else its weighted share
    of `limits.max_connections` among the enabled services and `max_connections_per_ip`."""
    limits = config.limits
    total, per_ip = {
        "smtp": (limits.smtp_max_connections, limits.smtp_max_connections_per_ip),
        "submission": (limits.submission_max_connections,
                       limits.submission_max_connections_per_ip),
        "pop3": (limits.pop3_max_connections, limits.pop3_max_connections_per_ip),
        "imap": (limits.imap_max_connections, limits.imap_max_connections_per_ip),
    }[service]
    if total is None:
        weights = sum(SERVICE_WEIGHTS[name] for name in enabled_services(config)) or 1
        total = max(1, limits.max_connections * SERVICE_WEIGHTS[service] // weights)
    return ConnectionLimits(total, per_ip or limits.max_connections_per_ip)


def deadlines(config: Config, opening: float) -> Deadlines:
    """The session deadlines; `opening`: limits.helo_timeout or limits.login_timeout."""
    limits = config.limits
    return Deadlines(write_stall=limits.write_stall_timeout,
                     command_line=limits.command_line_timeout, opening=opening,
                     tls_handshake=limits.tls_handshake_timeout)


def pop3_listeners(config: Config, store: Store, guard: LoginGuard,
                   pool: ConnectionPool, tls: ssl.SSLContext,
                   sockets: dict[str, list[socket.socket]] | None = None,
                   wakeups: Wakeups | None = None) -> list[Listener]:
    """`pop3` (110: STLS, then USER/PASS or AUTH) and `pop3s` (995: implicit TLS). `sockets`:
    already bound listening sockets by listener name (a worker process), else bind here.
    `wakeups`: unused (POP3 sessions watch nothing; their store publishes)."""
    plain = config.listen_endpoints("pop3")
    implicit = config.listen_endpoints("pop3s")
    if not plain and not implicit:
        return []
    service = Pop3Service(store, guard)
    core = Pop3ServerConfig(hostname=config.hostname,
                            allow_plaintext_auth=config.pop3.allow_plaintext_auth,
                            max_errors=config.limits.max_errors,
                            junk_command_limit=config.limits.junk_command_limit)
    return _plain_and_implicit(
        config, "pop3", pool, tls, sockets,
        lambda implicit_tls: Pop3Endpoint(core, service, pool, tls, config.pop3.idle_timeout,
                                          config.limits.session_lifetime, implicit_tls,
                                          deadlines(config, config.limits.login_timeout)).factory)


def imap_settings(config: Config) -> ImapSettings:
    """The IMAP service's limits from `[imap]` (append_limit unset: max_message_size)."""
    imap = config.imap
    return ImapSettings(append_limit=imap.append_limit or config.limits.max_message_size,
                        fetch_batch=imap.fetch_batch,
                        search_content_limit=imap.search_content_limit,
                        max_search_updates=imap.max_search_updates)


def imap_core_config(config: Config, settings: ImapSettings) -> ImapServerConfig:
    """What the IMAP core announces and bounds: exactly the service's capabilities."""
    return ImapServerConfig(
        hostname=config.hostname, capabilities=capabilities(settings), enableable=ENABLEABLE,
        allow_plaintext_auth=config.imap.allow_plaintext_auth,
        max_errors=config.limits.max_errors,
        parser=ImapParserConfig(max_append_size=settings.append_limit))


def imap_listeners(config: Config, store: Store, guard: LoginGuard,
                   pool: ConnectionPool, tls: ssl.SSLContext,
                   sockets: dict[str, list[socket.socket]] | None = None,
                   wakeups: Wakeups | None = None) -> list[Listener]:
    """`imap` (143: STARTTLS, LOGINDISABLED before it) and `imaps` (993: implicit TLS, RFC
    8314). `wakeups`: what sessions watch for other processes' changes (IDLE, NOOP)."""
    plain = config.listen_endpoints("imap")
    implicit = config.listen_endpoints("imaps")
    if not plain and not implicit:
        return []
    settings = imap_settings(config)
    service = ImapMailService(store, guard, wakeups=wakeups, settings=settings)
    core = imap_core_config(config, settings)
    return _plain_and_implicit(
        config, "imap", pool, tls, sockets,
        lambda implicit_tls: ImapEndpoint(core, service, pool, tls, config.imap.idle_timeout,
                                          config.limits.session_lifetime, implicit_tls,
                                          deadlines(config, config.limits.login_timeout)).factory)


def _plain_and_implicit(config: Config, kind: str, pool: ConnectionPool, tls: ssl.SSLContext,
                        sockets: dict[str, list[socket.socket]] | None,
                        factory: Callable[[bool], SessionFactory]) -> list[Listener]:
    """The `kind` listener (STARTTLS/STLS) and the `kind`+"s" one (implicit TLS, RFC 8314),
    each where the config lists addresses; `factory(implicit_tls)` makes their protocols."""
    out: list[Listener] = []
    for name, implicit_tls in ((kind, False), (kind + "s", True)):
        endpoints = config.listen_endpoints(name)
        if endpoints:
            out.append(_listener(config, name, endpoints, factory(implicit_tls), pool, tls,
                                 implicit_tls, sockets))
    return out


def _listener(config: Config, name: str, endpoints: list[tuple[str, int]],
              factory: SessionFactory, pool: ConnectionPool, tls: ssl.SSLContext,
              implicit_tls: bool, sockets: dict[str, list[socket.socket]] | None) -> Listener:
    return Listener(name, endpoints, factory,
                    ssl_context=tls if implicit_tls else None,
                    sockets=(sockets or {}).get(name),
                    load=(lambda: pool.total) if sockets else None, pool=pool,
                    handshake_timeout=config.limits.tls_handshake_timeout)


ListenerBuilder = Callable[[Config, Store, LoginGuard, ConnectionPool, ssl.SSLContext,
                            "dict[str, list[socket.socket]] | None", "Wakeups | None"],
                           list[Listener]]


@dataclass(frozen=True, slots=True)
class MailboxService:
    """A service that may run in worker processes (`[<name>] workers`): its listeners, how
    many processes serve them, the child's entry module (worker_process.py)."""

    name: str  # the SERVICES key, the log prefix and the workers' role prefix
    protocols: tuple[str, ...]
    module: str
    listeners: ListenerBuilder
    watches: bool  # its sessions watch wake-ups (else the store only publishes)

    def workers(self, config: Config) -> int:
        workers: int = getattr(config, self.name).workers
        return workers

    def configured(self, config: Config) -> bool:
        return any(config.listen_endpoints(kind) for kind in self.protocols)


MAILBOX_SERVICES = {
    "pop3": MailboxService("pop3", POP3_PROTOCOLS, "mailhouse.pop3_process", pop3_listeners,
                           watches=False),
    "imap": MailboxService("imap", IMAP_PROTOCOLS, "mailhouse.imap_process", imap_listeners,
                           watches=True),
}


class App:
    def __init__(self, config: Config, *, passwords: Passwords | None = None,
                 signer: Signer | None = None,
                 on_queued: Callable[[], None] | None = None,
                 shared_metrics: bool = False) -> None:
        """`passwords`: the hashing policy (tests pass a cheap one). `signer`: DKIM signing
        (default: keys under data_dir/dkim when dkim.enabled). `on_queued`: called after mail
        was queued (default: wake the queue worker). `shared_metrics`: count every process's
        metrics in data_dir/run/metrics (`serve`; metrics.py)."""
        self.config = config
        self.shared_metrics = shared_metrics
        # Deliveries here are published to IMAP sessions in every process (started in start()).
        self.wakeups = SocketWakeups(config.data_dir)
        self.store: Store = open_store(config.data_dir, wakeups=self.wakeups)
        self.directory = DirectoryCache(self.store)
        self.trace = TraceRecorder(self.store)  # the message trace's steps, this process's
        self.trace_pruner = TracePruner(self.store, config.trace.keep_days)
        self.tracker = ConnectionTracker(config.limits.max_connections)
        self.listeners: list[Listener] = []
        self.demo_password: str | None = None
        self.passwords = passwords or Passwords()
        # One throttle for every protocol that takes passwords, so guesses spread over
        # submission, IMAP and POP3 add up; workers reach it through `throttle_server`.
        self.login_throttle = LoginThrottle.from_config(config.submission)
        self.login_guard = LoginGuard(Accounts(self.store, self.passwords), self.login_throttle,
                                      config.submission.auth_failure_delay)
        if signer is None and config.dkim.enabled:
            signer = DkimSigner(DkimKeys(config.data_dir / "dkim"))
        self.signer = signer
        # The queue: on this loop ("inline") or in a supervised child process ("separate").
        self.outbound: Outbound | None = None
        self.queue_process: QueueSupervisor | None = None
        if config.queue.process == "inline":
            self.outbound = build_outbound(config, self.store, self.directory, self.trace)
        else:
            self.queue_process = QueueSupervisor(config)
        self.on_queued = on_queued or self._wake_queue
        # POP3 and IMAP in worker processes (`workers` > 1): listeners bound here, served there.
        self.workers: list[ChildSupervisor] = []
        self._worker_bound: dict[str, list[Listener]] = {}  # by MailboxService name
        # Listening sockets bound as root before the drop, until a Listener serves them.
        self._bound: dict[str, list[socket.socket]] = {}
        self.admin: HttpListener | None = None
        self.admin_notice: str | None = None  # the web admin's setup link, when armed
        self._tls: ssl.SSLContext | None = None
        # The public web listener's own context when it answers TLS-ALPN-01 (RFC 8737): the
        # challenge certificate is then served there only, never to a mail client of the
        # same name during a validation.
        self._web_tls: ssl.SSLContext | None = None
        self._admin_sockets: list[socket.socket] = []
        self.web: HttpListener | None = None
        self._web_sockets: list[socket.socket] = []
        self._serving = False  # every listener started (readiness)
        # [acme]: the renewal service, its challenge answers, and the HTTP-01 listener.
        self.acme: RenewalService | None = None
        self.acme_board = ChallengeBoard()
        self.acme_http: HttpListener | None = None
        self._acme_sockets: list[socket.socket] = []
        self.throttle_server: ThrottleServer | None = None

    def _wake_queue(self) -> None:
        if self.outbound is not None:
            self.outbound.worker.wake()
        elif self.queue_process is not None:
            self.queue_process.wake()

    def tls_files(self) -> tuple[Path, Path]:
        if self.config.tls.cert and self.config.tls.key:
            return self.config.tls.cert, self.config.tls.key
        acme_pair = current_pair(self.config.data_dir) if self.config.acme.enabled else None
        if acme_pair is not None:
            return acme_pair
        return ensure_self_signed(self.config.data_dir / "tls", self.config.hostname)

    def _load_tls(self) -> tuple[ssl.SSLContext, tuple[bytes, bytes]]:
        """The server context and the PEM bytes for the workers (worker_process.py)."""
        cert, key = self.tls_files()
        try:
            return server_context(cert, key), (cert.read_bytes(), key.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls.cert/tls.key: cannot load the certificate: {exc}") from exc

    async def start(self) -> None:
        """Root's part first, then the drop, then everything that touches data_dir (the
        privilege model: privileges.py, docs/decisions.md)."""
        config = self.config
        ensure_fd_limit(config.limits.max_connections)  # inherited by the children
        self._warn_about_caps()
        account = service_account(config)
        if account is not None:
            prepare_data_dir(config.data_dir, account)
        # As root: a configured key may be readable by root only. The self-signed pair lives
        # in data_dir, so it is made and read after the drop, as the service user.
        configured_tls = self._load_tls() if config.tls.cert and config.tls.key else None
        self._bound = self._bind_listening_sockets()
        self._admin_sockets = self._bind_admin_sockets()
        self._web_sockets = self._bind_http("web.listen", config.web.endpoints())
        if config.acme.enabled and "http-01" in config.acme.challenges:
            self._acme_sockets = self._bind_http("acme.http_listen",
                                                 config.acme.http_endpoints())
        if account is not None:
            become(account)
            log.info("event=privileges.dropped user=%s", account.name)
            check_interpreter(account)
            check_data_dir_access(config.data_dir, account)
        else:
            config.data_dir.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
        tighten_data_dir(config.data_dir)
        if self.shared_metrics:  # as the service user, before any child process exists
            metrics.prepare(config.data_dir)
            recent_errors.prepare(config.data_dir)
        tls, pem = configured_tls or self._load_tls()
        self._tls = tls
        if config.acme.enabled:
            if "tls-alpn-01" in config.acme.challenges and self._web_sockets:
                self._web_tls = server_context(*self.tls_files())
                install_alpn_responder(self._web_tls, self.acme_board)
            self.acme = acme_from_config(config, self.acme_board, self.reload_tls)
        await self.wakeups.start()
        await self.store.open()
        if config.demo:
            await self._ensure_demo()
        await self.directory.start()
        self.trace_pruner.start()
        if self.outbound is not None:
            await self.outbound.worker.start()
        limits = config.limits
        core = SmtpServerConfig(
            hostname=config.hostname,
            max_message_size=limits.max_message_size,
            max_recipients=limits.max_recipients,
            max_command_line=limits.max_command_line,
            max_text_line=limits.max_text_line,
            max_errors=limits.max_errors,
            max_received_headers=config.smtp.max_received_headers,
            junk_command_limit=limits.junk_command_limit,
        )
        inbound = InboundService(self.store, self.directory,
                                 InboundPolicy(config.hostname, config.smtp.plus_separator),
                                 trace=self.trace)
        timeouts = SmtpTimeouts(limits.idle_timeout, limits.data_timeout,
                                limits.session_lifetime)
        mx = SmtpEndpoint(core, inbound, self.tracker.pool("smtp", service_limits(config, "smtp")),
                          tls, timeouts, deadlines=deadlines(config, limits.helo_timeout))
        if config.listen_endpoints("smtp"):
            self.listeners.append(Listener("smtp", config.listen_endpoints("smtp"), mx.factory))
        self._add_submission_listeners(core, tls, timeouts)
        for service in MAILBOX_SERVICES.values():
            self._add_mailbox_listeners(service, tls)
        for kind in NOT_BUILT:
            if config.listen_endpoints(kind):
                log.info("event=listen.skipped service=%s reason=not_built_yet", kind)
        self.tracker.start()
        for listener in self.listeners:
            listener.sockets = self._bound.pop(listener.name, [])  # serve what root bound
            await listener.start()
        for name, bound in self._worker_bound.items():
            for listener in bound:
                listener.sockets = self._bound.pop(listener.name, [])
                for sock in listener.sockets:
                    host, port = sock.getsockname()[:2]
                    log.info("event=listen service=%s address=%s:%d workers=%d", listener.name,
                             host, port, MAILBOX_SERVICES[name].workers(config))
        # The children run as this (unprivileged) process does; supervisor.py checks that the
        # interpreter is theirs to run before each spawn.
        if self.queue_process is not None:
            await self.queue_process.start()
        for name in self._worker_bound:
            await self._start_workers(MAILBOX_SERVICES[name], pem)
        if self._admin_sockets:
            context = AdminContext(config, self.store, self.passwords, self.login_throttle,
                                   self.readiness, self.metrics_text,
                                   certificate=lambda: self.tls_files()[0])
            self.admin = HttpListener(build_admin_app(context, ADMIN_FACES),
                                      self._admin_sockets, tls)
            self._admin_sockets = []
            await self.admin.start()
            self.admin_notice = await arm_bootstrap(context, self._admin_bases())
        if self._web_sockets:
            served = frozenset(kind for kind in LISTENER_KINDS
                               if kind not in NOT_BUILT and config.listen_endpoints(kind))
            self.web = HttpListener(
                build_public_app(config, lambda: self.directory.current.domains, served,
                                 ProfileSigner(self.tls_files)),
                self._web_sockets, self._web_tls or tls, name="web")
            self._web_sockets = []
            await self.web.start()
        if self._acme_sockets:
            self.acme_http = HttpListener(challenge_app(self.acme_board), self._acme_sockets,
                                          None, name="acme-http")
            self._acme_sockets = []
            await self.acme_http.start()
        if self.acme is not None:  # after the listeners the CA will contact
            self.acme.start()
        self._serving = True

    def _admin_bases(self) -> list[str]:
        """https://host:port of each admin socket (a wildcard address: the hostname)."""
        bases = []
        for sock in self.admin.sockets if self.admin is not None else []:
            host, port = sock.getsockname()[:2]
            host = self.config.hostname if host in ("0.0.0.0", "::") else host
            bases.append(f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}")
        return bases

    def _bind_admin_sockets(self) -> list[socket.socket]:
        return self._bind_http("admin.listen", self.config.admin.endpoints())

    def _bind_http(self, key: str, endpoints: list[tuple[str, int]]) -> list[socket.socket]:
        bound: list[socket.socket] = []
        try:
            for host, port in endpoints:
                bound.extend(bind_sockets(host, port))
        except OSError as exc:
            for sock in bound:
                sock.close()
            raise ConfigError(f"{key}: cannot listen on {endpoints}: "
                              f"{exc.strerror}") from exc
        return bound

    def reload_tls(self) -> None:
        """SIGHUP: the certificate and key files read again (a renewal), here and in every
        worker; new handshakes get the new pair, open sessions are not touched."""
        if self._tls is None:
            return
        cert, key = self.tls_files()
        problem = reload_certificate(self._tls, cert, key)
        if problem is None and self._web_tls is not None:
            problem = reload_certificate(self._web_tls, cert, key)
        if problem is None:
            log.info("event=tls.reloaded cert=%s", cert)
            try:  # a worker restarted from now on starts with the new pair
                pem = (cert.read_bytes(), key.read_bytes())
            except OSError:
                pem = None
            if pem is not None:
                for worker in self.workers:
                    worker.update_payload(pem=pem)
        else:
            log.error("event=tls.reload_failed cert=%s error=%s (the old certificate stays)",
                      cert, problem)
        for worker in self.workers:
            worker.send_signal(signal.SIGHUP)

    def on_sighup(self) -> None:
        """Certificates read again, and ACME renewal checks now rather than at its next
        scheduled time (`systemctl reload mailhouse` after fixing DNS or the firewall); the
        config file is checked and what only a restart would apply is named."""
        self.reload_tls()
        if self.acme is not None:
            self.acme.wake()
        self.check_config_file()

    def check_config_file(self) -> list[str]:
        """Read the config file again: a mistake is reported now, not at the next start, and
        changed settings are listed as waiting for a restart (docs/decisions.md: settings are
        not applied live). Returns the changed keys."""
        source = self.config.source
        if source is None:
            return []
        if not os.access(source, os.R_OK):  # root's file, and we dropped privileges: fine
            log.info("event=config.unchecked file=%s reason=unreadable_after_privilege_drop",
                     source)
            return []
        try:
            fresh = load_config(source)
        except ConfigError as exc:
            log.error("event=config.invalid file=%s error=%s (the running config stays; a "
                      "restart would fail)", source, exc)
            return []
        changed = changed_keys(self.config, fresh)
        if changed:
            log.warning("event=config.restart_needed file=%s keys=%s (changed in the file; "
                        "applied at the next restart)", source, ",".join(changed))
        return changed

    async def metrics_text(self) -> bytes:
        """/metrics: every process's counters, and the queue as the store has it now."""
        try:
            stats = await asyncio.wait_for(self.store.queue_stats(), READY_STORE_TIMEOUT)
        except Exception:  # the counters still answer; the gauges are left out
            log.warning("event=metrics.queue_failed", exc_info=True)
            return await asyncio.to_thread(metrics.render)
        age = None if stats.oldest is None else max(0.0, time.time() - stats.oldest)
        # The shared files of every process are read and summed: not on the event loop.
        return await asyncio.to_thread(
            metrics.render, metrics.QueueNow(stats.messages, stats.recipients, age))

    async def readiness(self) -> dict[str, Check]:
        """/healthz/ready (web/health.py): can this server take mail now?"""
        checks = {"listeners": Check(self._serving and all(
            listener.bound_ports() for listener in self.listeners),
            "accepting" if self._serving else "starting or stopping")}
        try:
            await asyncio.wait_for(self.store.directory_serial(), READY_STORE_TIMEOUT)
            checks["store"] = Check(True, "answers")
        except Exception as exc:  # any failure is the answer: not ready, and why
            checks["store"] = Check(False, f"{type(exc).__name__}: {exc}"[:200])
        if self.queue_process is not None:
            pid = self.queue_process.pid
            checks["queue"] = Check(pid is not None,
                                    f"process {pid}" if pid is not None else "not running")
        return checks

    def _warn_about_caps(self) -> None:
        """Per-service caps set above the process total cannot all be reached: the total
        refuses first (net/listener.py). Legal, but rarely what was meant."""
        limits = self.config.limits
        total = sum(service_limits(self.config, name).max_connections
                    for name in enabled_services(self.config))
        if total > limits.max_connections:
            log.warning("event=limits.caps_exceed_total services=%d max_connections=%d",
                        total, limits.max_connections)

    def _bind_listening_sockets(self) -> dict[str, list[socket.socket]]:
        """Every listening socket, bound before the drop (ports below 1024 need root) and
        served only once the store is open."""
        bound: dict[str, list[socket.socket]] = {}
        try:
            for kind in LISTENER_KINDS:
                if kind in NOT_BUILT:
                    continue
                endpoints = self.config.listen_endpoints(kind)
                for host, port in endpoints:
                    try:
                        bound.setdefault(kind, []).extend(bind_sockets(host, port))
                    except OSError as exc:
                        raise ConfigError(f"listen.{kind}: cannot listen on {endpoints}: "
                                          f"{exc.strerror}") from exc
        except BaseException:
            for sockets in bound.values():
                for sock in sockets:
                    sock.close()
            raise
        return bound

    def _add_submission_listeners(self, core: SmtpServerConfig, tls: ssl.SSLContext,
                                  timeouts: SmtpTimeouts) -> None:
        """`submission` (587: STARTTLS, then AUTH) and `submissions` (465: implicit TLS, RFC
        8314). Both require AUTH before MAIL; the MX listener above never offers AUTH, so it
        still never relays, authenticated or not."""
        config = self.config
        plain = config.listen_endpoints("submission")
        implicit = config.listen_endpoints("submissions")
        if not plain and not implicit:
            return
        service = SubmissionService(self.store, self.directory, self.login_guard,
                                    SubmissionPolicy.from_config(config),
                                    signer=self.signer, on_queued=self.on_queued,
                                    trace=self.trace)
        core = replace(core, auth_mechanisms=MECHANISMS, require_auth=True)
        pool = self.tracker.pool("submission", service_limits(config, "submission"))
        opening = deadlines(config, config.limits.helo_timeout)
        if plain:
            endpoint = SmtpEndpoint(core, service, pool, tls, timeouts, deadlines=opening)
            self.listeners.append(Listener("submission", plain, endpoint.factory))
        if implicit:
            endpoint = SmtpEndpoint(core, service, pool, tls, timeouts, implicit_tls=True,
                                    deadlines=opening)
            self.listeners.append(Listener("submissions", implicit, endpoint.factory,
                                           ssl_context=tls, pool=pool,
                                           handshake_timeout=config.limits.tls_handshake_timeout))

    def _add_mailbox_listeners(self, service: MailboxService, tls: ssl.SSLContext) -> None:
        """POP3 or IMAP on this loop (`workers = 1`), or sockets bound here for the workers."""
        config = self.config
        if not service.configured(config):
            return
        if service.workers(config) <= 1:
            pool = self.tracker.pool(service.name, service_limits(config, service.name))
            self.listeners.extend(service.listeners(config, self.store, self.login_guard, pool,
                                                    tls, None, self.wakeups))
            return
        self._worker_bound[service.name] = [
            Listener(name, config.listen_endpoints(name), None,
                     ssl_context=tls if name.endswith("s") else None)
            for name in service.protocols if config.listen_endpoints(name)]

    async def _start_workers(self, service: MailboxService,
                             pem: tuple[bytes, bytes] | None) -> None:
        sockets = {listener.name: [s.fileno() for s in listener.sockets]
                   for listener in self._worker_bound[service.name]}
        fds = [fd for group in sockets.values() for fd in group]
        count = service.workers(self.config)
        # Each worker (each spawn) gets its own channel to this process's login throttle.
        if self.throttle_server is None:
            self.throttle_server = ThrottleServer(
                self.login_throttle, max_pending=self.config.limits.max_connections)
        server = self.throttle_server
        for index in range(1, count + 1):
            worker = ChildSupervisor(
                self.config, service.module, name=service.name, label=f"worker={index}",
                payload={"service": service.name, "index": index, "workers": count,
                         "sockets": sockets, "pem": pem},
                pass_fds=fds, channels=lambda: [server.open_channel()])
            await worker.start()
            self.workers.append(worker)

    async def _ensure_demo(self) -> None:
        """The try-it-now instance: a demo domain and user, password kept in data_dir."""
        secret_file = self.config.data_dir / "demo-password"
        accounts = Accounts(self.store)
        await accounts.add_domain(DEMO_DOMAIN)
        if await self.store.get_account(DEMO_USER) is None:
            password = secrets.token_urlsafe(12)
            await accounts.add_user(DEMO_USER, password)
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")
        with contextlib.suppress(OSError):
            self.demo_password = secret_file.read_text().strip()

    async def stop(self) -> None:
        self._serving = False
        if self.acme is not None:
            await self.acme.stop()
        for http in (self.admin, self.web, self.acme_http):
            if http is not None:
                await http.stop()
        self.admin = self.web = self.acme_http = None
        for sock in [*self._admin_sockets, *self._web_sockets, *self._acme_sockets]:
            sock.close()  # start-up failed first
        self._admin_sockets, self._web_sockets, self._acme_sockets = [], [], []
        if self.queue_process is not None:
            self.queue_process.begin_stop()  # a child ended by the same Ctrl-C stays ended
        for worker in self.workers:
            worker.begin_stop()
        for listener in self.listeners:
            await listener.stop_accepting()
        # Workers finish their sessions (SIGTERM: the same grace) alongside ours.
        await asyncio.gather(self.tracker.shutdown(SHUTDOWN_GRACE),
                             *(w.stop(SHUTDOWN_GRACE + CHILD_CLOSE_MARGIN)
                               for w in self.workers))
        for bound in self._worker_bound.values():
            for listener in bound:
                listener.close_sockets()
        for sockets in self._bound.values():  # start-up failed before they were served
            for sock in sockets:
                sock.close()
        self._bound.clear()
        if self.throttle_server is not None:  # after the workers: they log in until they exit
            await self.throttle_server.close()
        # Deliveries in flight finish or are cancelled; unfinished recipients stay queued.
        if self.outbound is not None:
            await self.outbound.stop(QUEUE_GRACE)
        if self.queue_process is not None:
            await self.queue_process.stop(QUEUE_GRACE)
        await self.trace_pruner.stop()
        await self.trace.close()  # what the sessions and the queue recorded, before the store
        await self.directory.stop()
        await self.store.close()
        await self.wakeups.close()

    def banner(self) -> str:
        lines = ["mailhouse is running."]
        bound = [listener for group in self._worker_bound.values() for listener in group]
        for listener in [*self.listeners, *bound]:
            for (host, _), port in zip(listener.endpoints, listener.bound_ports(), strict=False):
                lines.append(f"  {listener.name:<11} {host}:{port}")
        if self.admin is not None:
            for sock in self.admin.sockets:
                host, port = sock.getsockname()[:2]
                lines.append(f"  {'admin':<11} https://{host}:{port}/healthz/ready")
        if self.web is not None:
            for sock in self.web.sockets:
                host, port = sock.getsockname()[:2]
                lines.append(f"  {'web':<11} https://{host}:{port} (client autoconfiguration)")
        if self.acme_http is not None:
            for sock in self.acme_http.sockets:
                host, port = sock.getsockname()[:2]
                lines.append(f"  {'acme-http':<11} http://{host}:{port} (ACME HTTP-01 only)")
        lines.append(f"  data        {self.config.data_dir}")
        if self.admin_notice:
            lines.append(self.admin_notice)
        if self.config.demo:
            lines.append(f"  demo domain {DEMO_DOMAIN}")
            lines.append(f"  demo user   {DEMO_USER}  password: {self.demo_password}")
            lines.append("  add a user: mailhouse user add alice@" + DEMO_DOMAIN)
        return "\n".join(lines)


async def run(config: Config) -> None:
    sdnotify.claim()  # before the queue and worker processes are started: not theirs to use
    app = App(config, shared_metrics=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.on_sighup)
    try:
        await app.start()
        print(app.banner(), file=sys.stderr, flush=True)
        sdnotify.notify(f"READY=1\nSTATUS=serving mail for {config.hostname}")
        interval = sdnotify.watchdog_interval()
        watchdog = (asyncio.create_task(watchdog_pings(app.readiness, interval))
                    if interval is not None else None)
        await stop.wait()
        if watchdog is not None:
            watchdog.cancel()
        sdnotify.notify("STOPPING=1")
        log.info("event=shutdown.begin")
    finally:
        await app.stop()
        log.info("event=shutdown.done")


async def watchdog_pings(readiness: Callable[[], Awaitable[Mapping[str, Check]]],
                         interval: float) -> None:
    """"WATCHDOG=1" every `interval` while the readiness checks pass (/healthz/ready's: the
    listeners accept, the store answers, the queue process runs). A check that fails, or
    that takes longer than the interval, skips the ping: systemd restarts the server once
    `WatchdogSec` passes without one (docs/decisions.md)."""
    healthy = True
    while True:
        try:
            checks = await asyncio.wait_for(readiness(), interval)
            failing = sorted(name for name, check in checks.items() if not check.ok)
        except Exception as exc:  # the check itself failing or too slow is the answer
            failing = [f"readiness ({type(exc).__name__})"]
        if not failing:
            sdnotify.notify("WATCHDOG=1")
            if not healthy:
                log.info("event=watchdog.healthy (pings resume)")
        elif healthy:
            log.warning("event=watchdog.unhealthy failing=%s (no pings: systemd restarts "
                        "the server after WatchdogSec)", ",".join(failing))
        healthy = not failing
        await asyncio.sleep(interval)


def serve(config: Config) -> int:
    """`mailhouse serve`: run in the foreground until SIGTERM/SIGINT."""
    previous = os.umask(UMASK)  # every file the server and its children create is private
    try:
        return _serve(config)
    finally:
        os.umask(previous)


def _serve(config: Config) -> int:
    configure_logging(config.log.level, "main", config.log.format)
    for warning in config.warnings:
        log.warning("event=config.warning %s", warning)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run(config))
    except ConfigError as exc:
        print(f"mailhouse: {exc}", file=sys.stderr)
        return 2
    return 0
