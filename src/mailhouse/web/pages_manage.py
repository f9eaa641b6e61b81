"""The web admin's pages: dashboard, domains (with their DNS records and live checks), users
and aliases, the queue, the audit log. Each change goes through the service the CLI uses, with
the actor `operator:<name>`, and answers with a redirect (POST/redirect/GET) to a page that
shows what happened once (Session.notice).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import dns.exception
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailhouse.service.accounts import (
    AccountError,
    Accounts,
    canonical_domain,
    format_size,
    parse_size,
)
from mailhouse.service.doctor import CheckResult, Doctor, DoctorSetup, Status
from mailhouse.service.doctor_dns import DnsLookups, make_resolver
from mailhouse.service.queue_admin import NoSuchMessage, QueueAdmin
from mailhouse.web import dashboard
from mailhouse.web.pages import Kit, Refused, action, actor, page
from mailhouse.web.sessions import Session

log = logging.getLogger("mailhouse.admin")

DNS_TIMEOUT: Final = 5.0  # seconds per name for a domain page's live checks
AUDIT_SHOWN: Final = 200  # newest audit entries on the audit page
CHECKS_TIMEOUT: Final = 60.0  # seconds the checks page's doctor run may take


def when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def accounts(kit: Kit, session: Session) -> Accounts:
    return Accounts(kit.context.store, kit.context.passwords, actor=actor(session),
                    clock=kit.context.clock)


def queue_admin(kit: Kit, session: Session) -> QueueAdmin:
    return QueueAdmin(kit.context.store, actor=actor(session), clock=kit.context.clock)


def done(kit: Kit, session: Session, location: str, text: str,
         kind: str = "ok") -> Response:
    session.notice = (kind, text)
    return kit.redirect(location)


def show(kit: Kit, request: Request, session: Session, template: str,
         **values: Any) -> Response:
    notice, session.notice = session.notice, None
    return kit.render(request, template, session=session, notice=notice, when=when, age=age,
                      size=format_size, **values)


# --- dashboard ----------------------------------------------------------------------------------

async def dashboard_page(kit: Kit, request: Request, session: Session) -> Response:
    context = kit.context
    now = context.clock()
    view = await dashboard.overview(context.config, context.store, context.metrics, now,
                                    context.certificate)
    cert = view.certificate
    cert_days = (None if cert is None or cert.not_after is None
                 else (cert.not_after - now) / 86400)
    return show(kit, request, session, "dashboard.html", view=view, cert_days=cert_days,
                errors=kit.errors.newest_first(), columns=tuple(dashboard.HOURLY),
                acme=context.config.acme.enabled)


# --- domains ------------------------------------------------------------------------------------

async def domains_page(kit: Kit, request: Request, session: Session) -> Response:
    return show(kit, request, session, "domains.html",
                domains=await accounts(kit, session).list_domains())


async def domain_add(kit: Kit, request: Request, session: Session,
                     fields: dict[str, str]) -> Response:
    try:
        domain = await accounts(kit, session).add_domain(fields.get("domain", ""))
    except AccountError as exc:
        return done(kit, session, "/domains", str(exc), "error")
    # Keys from the start, so mail is signed from the first message (as `domain add` does).
    from mailhouse.cli_dns import dkim_keys

    try:
        await asyncio.to_thread(dkim_keys(kit.context.config).ensure, domain)
    except (OSError, ValueError) as exc:
        return done(kit, session, f"/domains/{domain}",
                    f"{domain} added, but its DKIM keys could not be made: {exc}", "error")
    return done(kit, session, f"/domains/{domain}", f"{domain} added; publish its records.")


async def domain_remove(kit: Kit, request: Request, session: Session,
                        fields: dict[str, str]) -> Response:
    try:
        domain = await accounts(kit, session).remove_domain(fields.get("domain", ""))
    except AccountError as exc:
        return done(kit, session, "/domains", str(exc), "error")
    return done(kit, session, "/domains", f"{domain} removed.")


async def domain_page(kit: Kit, request: Request, session: Session) -> Response:
    from mailhouse.cli_dns import dkim_keys, records_for
    from mailhouse.cli_doctor import build_setup

    try:
        domain = canonical_domain(request.path_params["name"])
    except AccountError:
        raise Refused(404, "No such domain.") from None
    config = kit.context.config
    hosted = {d.name for d in await accounts(kit, session).list_domains()}
    if domain not in hosted:
        raise Refused(404, f"{domain} is not one of our domains.")
    keys = await asyncio.to_thread(dkim_keys(config).keys, domain)
    records = records_for(config, domain, keys)
    checks = await domain_checks(kit, domain, build_setup(config, [domain]))
    return show(kit, request, session, "domain.html", domain=domain, records=records,
                checks=checks, has_keys=bool(keys))


async def domain_checks(kit: Kit, domain: str, setup: DoctorSetup) -> list[CheckResult]:
    """The doctor's checks of this one domain (service/doctor.py), run live and at once."""
    try:
        resolver = make_resolver(kit.context.config.dns.addresses(), DNS_TIMEOUT)
    except dns.exception.DNSException as exc:
        return [CheckResult("dns", Status.SKIP, f"no resolver: {exc}", "",
                            "set [dns] nameservers in the config")]
    doctor = Doctor(setup, DnsLookups(resolver), clock=kit.context.clock)
    steps: list[Awaitable[CheckResult | list[CheckResult]]] = [
        doctor.check_mx(domain), doctor.check_spf(domain), doctor.check_dkim(domain),
        doctor.check_dmarc(domain), doctor.check_mta_sts(domain),
        doctor.check_tls_rpt(domain), doctor.check_client_records(domain)]
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    results: list[CheckResult] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            results.append(CheckResult(domain, Status.FAIL,
                                       f"the check itself failed: {outcome!r}"))
        elif isinstance(outcome, list):
            results += outcome
        else:
            results.append(outcome)
    return results


async def checks_page(kit: Kit, request: Request, session: Session) -> Response:
    """Every check of `mailhouse doctor` (the host's too), bounded in time as the API's."""
    from mailhouse.cli_doctor import build_setup

    context = kit.context
    hosted = sorted((await context.store.directory()).domains)
    setup = await asyncio.to_thread(build_setup, context.config, hosted)
    checks: list[CheckResult] = []
    problem = None
    try:
        resolver = make_resolver(context.config.dns.addresses(), DNS_TIMEOUT)
    except dns.exception.DNSException as exc:
        problem = f"No resolver: {exc}. Set [dns] nameservers in the config."
    else:
        doctor = Doctor(setup, DnsLookups(resolver), queue=context.store.queue_list,
                        clock=context.clock)
        try:
            async with asyncio.timeout(CHECKS_TIMEOUT):
                checks = await doctor.run()
        except TimeoutError:
            problem = (f"The checks took over {CHECKS_TIMEOUT:g} s (slow DNS?); "
                       "`mailhouse doctor` on the server shows which.")
    return show(kit, request, session, "checks.html", checks=checks, problem=problem)


# --- users and aliases --------------------------------------------------------------------------

async def users_page(kit: Kit, request: Request, session: Session) -> Response:
    service = accounts(kit, session)
    return show(kit, request, session, "users.html", users=await service.summaries(),
                aliases=await service.list_aliases(),
                domains=[d.name for d in await service.list_domains()])


def user_action(work: Callable[[Accounts, dict[str, str]], Awaitable[str]]) -> Callable[
        [Kit, Request, Session, dict[str, str]], Awaitable[Response]]:
    async def handler(kit: Kit, request: Request, session: Session,
                      fields: dict[str, str]) -> Response:
        try:
            text = await work(accounts(kit, session), fields)
        except AccountError as exc:
            return done(kit, session, "/users", str(exc), "error")
        return done(kit, session, "/users", text)
    return handler


async def _user_add(service: Accounts, fields: dict[str, str]) -> str:
    account = await service.add_user(fields.get("address", ""), fields.get("password", ""))
    return f"{account.address} added."


async def _user_password(service: Accounts, fields: dict[str, str]) -> str:
    key = await service.set_password(fields.get("address", ""), fields.get("password", ""))
    return f"The password of {key} is changed."


async def _user_quota(service: Accounts, fields: dict[str, str]) -> str:
    summary = await service.set_quota(fields.get("address", ""),
                                      parse_size(fields.get("quota", "") or "none"))
    limit = "no limit" if summary.limit is None else format_size(summary.limit)
    return f"The quota of {summary.address} is {limit}."


async def _user_remove(service: Accounts, fields: dict[str, str]) -> str:
    if fields.get("confirm") != "yes":
        raise AccountError("tick the box to confirm: the user's mail is deleted with them")
    removal = await service.remove_user(fields.get("address", ""))
    return f"{removal.key} removed with its mail."


async def _alias_add(service: Accounts, fields: dict[str, str]) -> str:
    targets = fields.get("targets", "").replace(",", " ").split()
    key, merged = await service.add_alias(fields.get("alias", ""), targets)
    return f"{key} → {', '.join(merged)}"


async def _alias_remove(service: Accounts, fields: dict[str, str]) -> str:
    removal = await service.remove_alias(fields.get("alias", ""))
    return f"{removal.key} removed."


# --- queue --------------------------------------------------------------------------------------

async def queue_page(kit: Kit, request: Request, session: Session) -> Response:
    return show(kit, request, session, "queue.html",
                messages=await queue_admin(kit, session).list(), now=kit.context.clock())


def queue_id(request: Request) -> int:
    value: int = request.path_params["queue_id"]
    return value


async def message_page(kit: Kit, request: Request, session: Session) -> Response:
    try:
        message = await queue_admin(kit, session).get(queue_id(request))
    except NoSuchMessage as exc:
        raise Refused(404, str(exc)) from None
    return show(kit, request, session, "message.html", message=message)


async def queue_retry(kit: Kit, request: Request, session: Session,
                      fields: dict[str, str]) -> Response:
    ident = queue_id(request)
    try:
        count = await queue_admin(kit, session).retry(ident)
    except NoSuchMessage as exc:
        return done(kit, session, "/queue", str(exc), "error")
    return done(kit, session, f"/queue/{ident}",
                f"Message {ident}: {count} recipient(s) to be tried again now.")


async def queue_delete(kit: Kit, request: Request, session: Session,
                       fields: dict[str, str]) -> Response:
    ident = queue_id(request)
    try:
        await queue_admin(kit, session).delete(ident)
    except NoSuchMessage as exc:
        return done(kit, session, "/queue", str(exc), "error")
    return done(kit, session, "/queue", f"Message {ident} deleted (no bounce sent).")


async def queue_bounce(kit: Kit, request: Request, session: Session,
                       fields: dict[str, str]) -> Response:
    """Asks the queue worker (service/queue_admin.py), so the message may still be listed for
    a second; hence back to the queue, not to the message page that may be gone by then."""
    ident = queue_id(request)
    if fields.get("confirm") != "yes":
        return done(kit, session, f"/queue/{ident}",
                    "Tick the box to confirm: a bounce cannot be undone.", "error")
    try:
        count = await queue_admin(kit, session).bounce(ident)
    except NoSuchMessage as exc:
        return done(kit, session, "/queue", str(exc), "error")
    return done(kit, session, "/queue",
                f"Message {ident}: {count} pending recipient(s) to be bounced now; the sender "
                "gets a delivery status notification.")


async def queue_flush(kit: Kit, request: Request, session: Session,
                      fields: dict[str, str]) -> Response:
    count = await queue_admin(kit, session).flush()
    return done(kit, session, "/queue", f"{count} deferred recipient(s) to be tried now.")


# --- audit --------------------------------------------------------------------------------------

async def audit_page(kit: Kit, request: Request, session: Session) -> Response:
    return show(kit, request, session, "audit.html",
                entries=await kit.operators().audit_log(AUDIT_SHOWN))


def routes(kit: Kit) -> list[BaseRoute]:
    return [
        Route("/", page(kit, dashboard_page), methods=["GET"]),
        Route("/domains", page(kit, domains_page), methods=["GET"]),
        Route("/domains/add", action(kit, domain_add), methods=["POST"]),
        Route("/domains/remove", action(kit, domain_remove), methods=["POST"]),
        Route("/domains/{name}", page(kit, domain_page), methods=["GET"]),
        Route("/checks", page(kit, checks_page), methods=["GET"]),
        Route("/users", page(kit, users_page), methods=["GET"]),
        Route("/users/add", action(kit, user_action(_user_add)), methods=["POST"]),
        Route("/users/password", action(kit, user_action(_user_password)), methods=["POST"]),
        Route("/users/quota", action(kit, user_action(_user_quota)), methods=["POST"]),
        Route("/users/remove", action(kit, user_action(_user_remove)), methods=["POST"]),
        Route("/aliases/add", action(kit, user_action(_alias_add)), methods=["POST"]),
        Route("/aliases/remove", action(kit, user_action(_alias_remove)), methods=["POST"]),
        Route("/queue", page(kit, queue_page), methods=["GET"]),
        Route("/queue/flush", action(kit, queue_flush), methods=["POST"]),
        Route("/queue/{queue_id:int}", page(kit, message_page), methods=["GET"]),
        Route("/queue/{queue_id:int}/retry", action(kit, queue_retry), methods=["POST"]),
        Route("/queue/{queue_id:int}/delete", action(kit, queue_delete), methods=["POST"]),
        Route("/queue/{queue_id:int}/bounce", action(kit, queue_bounce), methods=["POST"]),
        Route("/audit", page(kit, audit_page), methods=["GET"]),
    ]
