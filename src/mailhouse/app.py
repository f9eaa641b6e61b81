"""Builds the store, services and listeners from the config; starts and stops them.

One event loop (uvloop when installed) for every listening socket; blocking database and file
work runs in the store's threads. The outbound queue runs in a child process with its own loop
(`[queue] process = "separate"`, queue_process.py) or on this loop ("inline"). With
`[pop3] workers` > 1 this process binds the pop3/pop3s sockets and that many supervised
children serve them (pop3_process.py) (docs/decisions.md: how mailhouse uses the machine's
cores).
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mailhouse.config import Config
from mailhouse.errors import ConfigError
from mailhouse.message.dkim import DkimKeys, DkimSigner
from mailhouse.net.listener import ConnectionLimits, ConnectionTracker, Listener
from mailhouse.net.pop3 import Pop3Endpoint
from mailhouse.net.smtp import SmtpEndpoint, SmtpTimeouts
from mailhouse.net.tls import ensure_self_signed, server_context
from mailhouse.proto.pop3.server import Pop3ServerConfig
from mailhouse.proto.sasl import MECHANISMS
from mailhouse.proto.smtp.server import SmtpServerConfig
from mailhouse.queue_process import QUEUE_GRACE, Outbound, QueueSupervisor, build_outbound
from mailhouse.service.accounts import Accounts, Passwords
from mailhouse.service.directory import DirectoryCache
from mailhouse.service.inbound import InboundPolicy, InboundService
from mailhouse.service.pop3 import Pop3Service
from mailhouse.service.submission import Signer, SubmissionPolicy, SubmissionService
from mailhouse.service.throttle import LoginGuard, LoginThrottle
from mailhouse.store import open_store
from mailhouse.store.base import Store
from mailhouse.supervisor import ChildSupervisor, configure_logging

log = logging.getLogger("mailhouse")

DEMO_DOMAIN = "mailhouse.test"
DEMO_USER = f"demo@{DEMO_DOMAIN}"
SHUTDOWN_GRACE = 30.0  # seconds in-flight transactions get to finish on SIGTERM
# Capabilities whose listeners exist in the config but are not built yet: never bound.
NOT_BUILT = ("imap", "imaps")
POP3_PROTOCOLS = ("pop3", "pop3s")
CHILD_CLOSE_MARGIN = 5.0  # beyond SHUTDOWN_GRACE: a POP3 worker closes its store


def pop3_lock_dir(config: Config) -> Path:
    """Where the POP3 maildrop locks live (service/pop3.py): shared by every worker process."""
    return config.data_dir / "locks" / "pop3"


def pop3_listeners(config: Config, store: Store, guard: LoginGuard,
                   tracker: ConnectionTracker, tls: ssl.SSLContext,
                   sockets: dict[str, list[socket.socket]] | None = None) -> list[Listener]:
    """`pop3` (110: STLS, then USER/PASS or AUTH) and `pop3s` (995: implicit TLS). `sockets`:
    already bound listening sockets by listener name (a worker process), else bind here."""
    plain = config.listen_endpoints("pop3")
    implicit = config.listen_endpoints("pop3s")
    if not plain and not implicit:
        return []
    service = Pop3Service(store, guard, pop3_lock_dir(config))
    core = Pop3ServerConfig(hostname=config.hostname,
                            allow_plaintext_auth=config.pop3.allow_plaintext_auth,
                            max_errors=config.limits.max_errors,
                            junk_command_limit=config.limits.junk_command_limit)
    out: list[Listener] = []
    for name, endpoints, implicit_tls in (("pop3", plain, False), ("pop3s", implicit, True)):
        if endpoints:
            endpoint = Pop3Endpoint(core, service, tracker, tls, config.pop3.idle_timeout,
                                    config.limits.session_lifetime, implicit_tls)
            out.append(Listener(name, endpoints, endpoint.factory,
                                ssl_context=tls if implicit_tls else None,
                                sockets=(sockets or {}).get(name),
                                load=(lambda: tracker.total) if sockets else None))
    return out


class App:
    def __init__(self, config: Config, *, passwords: Passwords | None = None,
                 signer: Signer | None = None,
                 on_queued: Callable[[], None] | None = None) -> None:
        """`passwords`: the hashing policy (tests pass a cheap one). `signer`: DKIM signing
        (default: keys under data_dir/dkim when dkim.enabled). `on_queued`: called after mail
        was queued (default: wake the queue worker)."""
        self.config = config
        self.store: Store = open_store(config.data_dir)
        self.directory = DirectoryCache(self.store)
        self.tracker = ConnectionTracker(ConnectionLimits(
            config.limits.max_connections, config.limits.max_connections_per_ip))
        self.listeners: list[Listener] = []
        self.demo_password: str | None = None
        self.passwords = passwords or Passwords()
        # One throttle for every protocol that takes passwords, so guesses spread over
        # submission, IMAP and POP3 add up.
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
            self.outbound = build_outbound(config, self.store, self.directory)
        else:
            self.queue_process = QueueSupervisor(config)
        self.on_queued = on_queued or self._wake_queue
        # POP3 in worker processes ([pop3] workers > 1): listeners bound here, served there.
        self.pop3_workers: list[ChildSupervisor] = []
        self._pop3_bound: list[Listener] = []

    def _wake_queue(self) -> None:
        if self.outbound is not None:
            self.outbound.worker.wake()
        elif self.queue_process is not None:
            self.queue_process.wake()

    def tls_files(self) -> tuple[Path, Path]:
        if self.config.tls.cert and self.config.tls.key:
            return self.config.tls.cert, self.config.tls.key
        return ensure_self_signed(self.config.data_dir / "tls", self.config.hostname)

    async def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        cert, key = self.tls_files()
        try:
            tls = server_context(cert, key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls.cert/tls.key: cannot load the certificate: {exc}") from exc
        await self.store.open()
        if config.demo:
            await self._ensure_demo()
        await self.directory.start()
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
                                 InboundPolicy(config.hostname, config.smtp.plus_separator))
        timeouts = SmtpTimeouts(limits.idle_timeout, limits.data_timeout,
                                limits.session_lifetime)
        mx = SmtpEndpoint(core, inbound, self.tracker, tls, timeouts)
        if config.listen_endpoints("smtp"):
            self.listeners.append(Listener("smtp", config.listen_endpoints("smtp"), mx.factory))
        self._add_submission_listeners(core, tls, timeouts)
        self._add_pop3_listeners(tls)
        for kind in NOT_BUILT:
            if config.listen_endpoints(kind):
                log.info("event=listen.skipped service=%s reason=not_built_yet", kind)
        self.tracker.start()
        for listener in self.listeners:
            try:
                await listener.start()
            except OSError as exc:
                raise ConfigError(f"listen.{listener.name}: cannot listen on "
                                  f"{listener.endpoints}: {exc.strerror}") from exc
        for listener in self._pop3_bound:
            try:
                listener.bind()
            except OSError as exc:
                raise ConfigError(f"listen.{listener.name}: cannot listen on "
                                  f"{listener.endpoints}: {exc.strerror}") from exc
        pem = (cert.read_bytes(), key.read_bytes()) if self._pop3_bound else None
        drop_privileges(config)
        # After the drop: the children run as the same unprivileged user, never as root.
        if self.queue_process is not None:
            await self.queue_process.start()
        if self._pop3_bound:
            await self._start_pop3_workers(pem)

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
                                    signer=self.signer, on_queued=self.on_queued)
        core = replace(core, auth_mechanisms=MECHANISMS, require_auth=True)
        if plain:
            endpoint = SmtpEndpoint(core, service, self.tracker, tls, timeouts)
            self.listeners.append(Listener("submission", plain, endpoint.factory))
        if implicit:
            endpoint = SmtpEndpoint(core, service, self.tracker, tls, timeouts,
                                    implicit_tls=True)
            self.listeners.append(Listener("submissions", implicit, endpoint.factory,
                                           ssl_context=tls))

    def _add_pop3_listeners(self, tls: ssl.SSLContext) -> None:
        """POP3 on this loop (`[pop3] workers = 1`), or sockets bound here for the workers."""
        config = self.config
        lock_dir = pop3_lock_dir(config)
        if not any(config.listen_endpoints(name) for name in POP3_PROTOCOLS):
            return
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if config.pop3.workers <= 1:
            self.listeners.extend(pop3_listeners(config, self.store, self.login_guard,
                                                 self.tracker, tls))
            return
        for name in POP3_PROTOCOLS:
            if config.listen_endpoints(name):
                self._pop3_bound.append(Listener(name, config.listen_endpoints(name), None,
                                                 ssl_context=tls if name == "pop3s" else None))

    async def _start_pop3_workers(self, pem: tuple[bytes, bytes] | None) -> None:
        sockets = {listener.name: [s.fileno() for s in listener.sockets]
                   for listener in self._pop3_bound}
        fds = [fd for group in sockets.values() for fd in group]
        count = self.config.pop3.workers
        for index in range(1, count + 1):
            worker = ChildSupervisor(
                self.config, "mailhouse.pop3_process", name="pop3", label=f"worker={index}",
                payload={"index": index, "workers": count, "sockets": sockets, "pem": pem},
                pass_fds=fds)
            await worker.start()
            self.pop3_workers.append(worker)

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
        if self.queue_process is not None:
            self.queue_process.begin_stop()  # a child ended by the same Ctrl-C stays ended
        for worker in self.pop3_workers:
            worker.begin_stop()
        for listener in self.listeners:
            await listener.stop_accepting()
        # POP3 workers finish their sessions (SIGTERM: the same grace) alongside ours.
        await asyncio.gather(self.tracker.shutdown(SHUTDOWN_GRACE),
                             *(w.stop(SHUTDOWN_GRACE + CHILD_CLOSE_MARGIN)
                               for w in self.pop3_workers))
        for listener in self._pop3_bound:
            listener.close_sockets()
        # Deliveries in flight finish or are cancelled; unfinished recipients stay queued.
        if self.outbound is not None:
            await self.outbound.stop(QUEUE_GRACE)
        if self.queue_process is not None:
            await self.queue_process.stop(QUEUE_GRACE)
        await self.directory.stop()
        await self.store.close()

    def banner(self) -> str:
        lines = ["mailhouse is running."]
        for listener in [*self.listeners, *self._pop3_bound]:
            for (host, _), port in zip(listener.endpoints, listener.bound_ports(), strict=False):
                lines.append(f"  {listener.name:<11} {host}:{port}")
        lines.append(f"  data        {self.config.data_dir}")
        if self.config.demo:
            lines.append(f"  demo domain {DEMO_DOMAIN}")
            lines.append(f"  demo user   {DEMO_USER}  password: {self.demo_password}")
            lines.append("  add a user: mailhouse user add alice@" + DEMO_DOMAIN)
        return "\n".join(lines)


def drop_privileges(config: Config) -> None:
    """Started as root (to bind ports below 1024): hand data_dir to the service user and become
    it. Refuses to go on as root."""
    if os.geteuid() != 0 or not config.user or config.user == "root":
        return
    import pwd

    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise ConfigError(f"user: no system user {config.user!r}; create it (useradd --system "
                          f"{config.user}) or set `user` to an existing one") from None
    for root, dirs, files in os.walk(config.data_dir):
        for name in [root, *(os.path.join(root, d) for d in dirs),
                     *(os.path.join(root, f) for f in files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("event=privileges.dropped user=%s", config.user)


async def run(config: Config) -> None:
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        print(app.banner(), file=sys.stderr, flush=True)
        await stop.wait()
        log.info("event=shutdown.begin")
    finally:
        await app.stop()
        log.info("event=shutdown.done")


def serve(config: Config) -> int:
    """`mailhouse serve`: run in the foreground until SIGTERM/SIGINT."""
    configure_logging(config.log.level, "main")
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
