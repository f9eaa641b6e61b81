"""The admin JSON API (issue 9 §1), under /api/v1/: domains with their DNS records, users
with quotas and mailbox sizes, aliases, the outbound queue, DKIM keys, the certificate, the
doctor's checks, the message trace and the audit log — each a thin call into the same
services the CLI uses (service/accounts.py, queue_admin.py, operators.py, doctor.py,
trace.py), made as `operator:<name>` so every change lands in the audit log with who made it.

Automation authenticates with an operator's bearer token (service/api_tokens.py, RFC 6750);
no cookies, so no CSRF. web/api_http.py holds the plumbing, web/api_openapi.py the OpenAPI 3.1
description made from the same endpoint table, served at /api/v1/openapi.json.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import dns.exception
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, Router

from mailhouse.cli_dns import dkim_keys, records_for
from mailhouse.cli_doctor import DNS_TIMEOUT, build_setup
from mailhouse.service.accounts import Accounts, InvalidInput, UserSummary, canonical_domain
from mailhouse.service.acme_files import load_state
from mailhouse.service.api_tokens import ApiTokens
from mailhouse.service.cert_info import describe, presented_certificate
from mailhouse.service.doctor import Doctor
from mailhouse.service.doctor_dns import DnsLookups, make_resolver
from mailhouse.service.operators import Operators
from mailhouse.service.queue_admin import QueueAdmin
from mailhouse.service.trace import DEFAULT_TRACES, TraceQueryError, TraceService
from mailhouse.store.base import ApiToken, QueuedMessage
from mailhouse.web import api_schemas as s
from mailhouse.web import dashboard
from mailhouse.web.admin import AdminContext
from mailhouse.web.api_http import (
    ApiError,
    Endpoint,
    Guard,
    error_response,
    field_of,
    json_body,
    json_response,
    make_routes,
)
from mailhouse.web.api_openapi import openapi

PREFIX: Final = "/api/v1"
DOCTOR_TIMEOUT: Final = 60.0  # seconds the doctor's checks may take over the API; then 504


def actor(token: ApiToken) -> str:
    return f"operator:{token.admin}"


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _user(summary: UserSummary) -> dict[str, Any]:
    return {"address": summary.address, "mailboxes": summary.mailboxes,
            "messages": summary.messages, "used": summary.used, "quota": summary.limit}


def _queued(message: QueuedMessage) -> dict[str, Any]:
    return {"id": message.id, "sender": message.sender, "size": message.size,
            "created": _iso(message.created), "recipients": [
                {"address": r.address, "status": r.status.value, "attempts": r.attempts,
                 "next_attempt": _iso(r.next_attempt), "last_reply": r.last_reply}
                for r in message.recipients], "bounce_requested": message.bounce_requested}


class Api:
    """The endpoints over one AdminContext."""

    def __init__(self, context: AdminContext) -> None:
        self.context = context
        self.tokens = ApiTokens(context.store, clock=context.clock)

    def accounts(self, token: ApiToken) -> Accounts:
        c = self.context
        return Accounts(c.store, c.passwords, actor=actor(token), clock=c.clock)

    def queue(self, token: ApiToken) -> QueueAdmin:
        return QueueAdmin(self.context.store, actor=actor(token), clock=self.context.clock)

    # --- domains ----------------------------------------------------------------------------
    async def _records(self, domain: str) -> list[str]:
        config = self.context.config
        keys = await asyncio.to_thread(dkim_keys(config).keys, domain)
        return records_for(config, domain, keys)

    async def _domain(self, token: ApiToken, name: str) -> dict[str, Any]:
        domain = canonical_domain(name)
        found = [d for d in await self.accounts(token).list_domains() if d.name == domain]
        if not found:
            raise ApiError(404, "not_found", f"{domain} is not one of our domains")
        return {"name": domain, "users": found[0].users, "aliases": found[0].aliases,
                "records": await self._records(domain)}

    async def list_domains(self, request: Request, token: ApiToken) -> Response:
        domains = await self.accounts(token).list_domains()
        config = self.context.config

        def all_records() -> list[list[str]]:  # the DKIM keys are files: one thread for all
            keys = dkim_keys(config)
            return [records_for(config, d.name, keys.keys(d.name)) for d in domains]

        records = await asyncio.to_thread(all_records)
        return json_response([{"name": d.name, "users": d.users, "aliases": d.aliases,
                               "records": lines} for d, lines in zip(domains, records,
                                                                     strict=True)])

    async def get_domain(self, request: Request, token: ApiToken) -> Response:
        return json_response(await self._domain(token, request.path_params["domain"]))

    async def add_domain(self, request: Request, token: ApiToken) -> Response:
        name = canonical_domain(field_of(await json_body(request), "name", str))
        accounts = self.accounts(token)
        if any(d.name == name for d in await accounts.list_domains()):
            raise ApiError(409, "exists", f"{name} is one of our domains already")
        await accounts.add_domain(name)
        # Its DKIM keys now, as `domain add` makes them, so mail is signed from the start.
        await asyncio.to_thread(dkim_keys(self.context.config).ensure, name)
        return json_response(await self._domain(token, name), 201)

    async def remove_domain(self, request: Request, token: ApiToken) -> Response:
        await self.accounts(token).remove_domain(request.path_params["domain"])
        return Response(status_code=204)

    # --- users ------------------------------------------------------------------------------
    async def list_users(self, request: Request, token: ApiToken) -> Response:
        return json_response([_user(u) for u in await self.accounts(token).summaries()])

    async def get_user(self, request: Request, token: ApiToken) -> Response:
        return json_response(_user(await self.accounts(token).summary(
            request.path_params["address"])))

    async def add_user(self, request: Request, token: ApiToken) -> Response:
        body = await json_body(request)
        address = field_of(body, "address", str)
        password = field_of(body, "password", str)
        quota = field_of(body, "quota", int, required=False)
        accounts = self.accounts(token)
        account = await accounts.add_user(address, password)
        if quota is not None:
            return json_response(_user(await accounts.set_quota(account.address, quota)), 201)
        return json_response(_user(await accounts.summary(account.address)), 201)

    async def set_password(self, request: Request, token: ApiToken) -> Response:
        password = field_of(await json_body(request), "password", str)
        await self.accounts(token).set_password(request.path_params["address"], password)
        return Response(status_code=204)

    async def set_quota(self, request: Request, token: ApiToken) -> Response:
        body = await json_body(request)
        if "quota" not in body:
            raise InvalidInput("`quota` is missing (octets, or null for none)")
        quota = field_of(body, "quota", int, required=False)
        summary = await self.accounts(token).set_quota(request.path_params["address"], quota)
        return json_response(_user(summary))

    async def remove_user(self, request: Request, token: ApiToken) -> Response:
        removal = await self.accounts(token).remove_user(request.path_params["address"])
        return json_response({"removed": removal.key,
                              "aliases_changed": list(removal.aliases_changed),
                              "aliases_removed": list(removal.aliases_removed)})

    # --- aliases ----------------------------------------------------------------------------
    async def list_aliases(self, request: Request, token: ApiToken) -> Response:
        return json_response([{"alias": alias, "targets": list(targets)}
                              for alias, targets in await self.accounts(token).list_aliases()])

    async def add_alias(self, request: Request, token: ApiToken) -> Response:
        body = await json_body(request)
        alias = field_of(body, "alias", str)
        targets = field_of(body, "targets", list)
        if not all(isinstance(t, str) for t in targets):
            raise InvalidInput("`targets` is a list of addresses")
        key, merged = await self.accounts(token).add_alias(alias, targets)
        return json_response({"alias": key, "targets": list(merged)})

    async def remove_alias(self, request: Request, token: ApiToken) -> Response:
        removal = await self.accounts(token).remove_alias(request.path_params["alias"])
        return json_response({"removed": removal.key,
                              "aliases_changed": list(removal.aliases_changed),
                              "aliases_removed": list(removal.aliases_removed)})

    # --- the queue --------------------------------------------------------------------------
    async def list_queue(self, request: Request, token: ApiToken) -> Response:
        return json_response([_queued(m) for m in await self.queue(token).list()])

    async def get_queued(self, request: Request, token: ApiToken) -> Response:
        return json_response(_queued(await self.queue(token).get(request.path_params["id"])))

    async def queued_content(self, request: Request, token: ApiToken) -> Response:
        queue = self.queue(token)
        message = await queue.get(request.path_params["id"])
        chunks = queue.content(message.id)
        first = await anext(chunks, b"")  # a message gone meanwhile is still a clean 404

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        return StreamingResponse(body(), media_type="message/rfc822",
                                 headers={"Cache-Control": "no-store",
                                          "Content-Length": str(message.size)})

    async def retry(self, request: Request, token: ApiToken) -> Response:
        count = await self.queue(token).retry(request.path_params["id"])
        return json_response({"rescheduled": count})

    async def flush(self, request: Request, token: ApiToken) -> Response:
        return json_response({"rescheduled": await self.queue(token).flush()})

    async def bounce(self, request: Request, token: ApiToken) -> Response:
        """202: accepted; the queue worker fails the recipients and sends the DSN."""
        count = await self.queue(token).bounce(request.path_params["id"])
        return json_response({"bouncing": count}, 202)

    async def delete_queued(self, request: Request, token: ApiToken) -> Response:
        await self.queue(token).delete(request.path_params["id"])
        return Response(status_code=204)

    # --- DKIM, the certificate, the doctor, the audit log ------------------------------------
    async def dkim(self, request: Request, token: ApiToken) -> Response:
        domain = canonical_domain(request.path_params["domain"])
        if domain not in (await self.context.store.directory()).domains:
            raise ApiError(404, "not_found", f"{domain} is not one of our domains")
        keys = await asyncio.to_thread(dkim_keys(self.context.config).keys, domain)
        return json_response({"domain": domain, "keys": [
            {"selector": k.selector, "algorithm": k.algorithm, "name": k.record_name,
             "txt": k.record()} for k in keys]})

    async def certificate(self, request: Request, token: ApiToken) -> Response:
        config, current = self.context.config, self.context.certificate
        path = (await asyncio.to_thread(current) if current is not None
                else presented_certificate(config)[1])
        if path is None:
            raise ApiError(404, "not_found", "no certificate yet")
        try:
            info = await asyncio.to_thread(describe, path)
        except (OSError, ValueError) as exc:
            raise ApiError(500, "certificate_unreadable", f"{path}: {exc}") from None
        renewal = (await asyncio.to_thread(load_state, config.data_dir)
                   if config.acme.enabled else None)
        return json_response({
            "path": info.path, "subject": info.subject, "issuer": info.issuer,
            "names": list(info.names), "not_before": _iso(info.not_before),
            "not_after": _iso(info.not_after), "days_left": info.days_left(self.context.clock()),
            "self_signed": info.self_signed, "acme": config.acme.enabled,
            "renewal": None if renewal is None else {
                "failing": renewal.failing, "failures": renewal.failures,
                "last_attempt": _iso(renewal.last_attempt),
                "last_success": _iso(renewal.last_success), "last_error": renewal.last_error,
                "next_check": _iso(renewal.next_check)}})

    async def hourly(self, request: Request, token: ApiToken) -> Response:
        hours = await dashboard.hourly(self.context.store, self.context.clock())
        return json_response([{"hour": _iso(h.start), **h.counts} for h in hours])

    async def doctor(self, request: Request, token: ApiToken) -> Response:
        config, store = self.context.config, self.context.store
        hosted = sorted((await store.directory()).domains)
        wanted = [canonical_domain(d) for d in request.query_params.getlist("domain")]
        unknown = [d for d in wanted if d not in hosted]
        if unknown:
            raise ApiError(404, "not_found", f"{', '.join(unknown)}: not one of our domains")
        setup = await asyncio.to_thread(build_setup, config, wanted or hosted)
        try:
            lookups = DnsLookups(make_resolver(config.dns.addresses(), DNS_TIMEOUT))
        except dns.exception.DNSException as exc:
            raise ApiError(500, "no_resolver", f"no resolver: {exc}; set [dns] nameservers "
                           "in the config") from None
        doctor = Doctor(setup, lookups, queue=store.queue_list)
        try:
            async with asyncio.timeout(DOCTOR_TIMEOUT):
                results = await doctor.run()
        except TimeoutError:
            raise ApiError(504, "timeout", f"the checks took over {DOCTOR_TIMEOUT:g} s "
                           "(slow DNS?); `mailhouse doctor` shows which") from None
        return json_response([r.as_json() for r in results])

    async def find_traces(self, request: Request, token: ApiToken) -> Response:
        text = request.query_params.get("limit", str(DEFAULT_TRACES))
        if not (text.isascii() and text.isdigit()):
            raise InvalidInput("limit is a number of messages")
        try:
            found = await TraceService(self.context.store).find(
                request.query_params.get("q", ""), limit=int(text))
        except TraceQueryError as exc:
            raise InvalidInput(str(exc)) from None
        return json_response([t.as_json() for t in found])

    async def show_trace(self, request: Request, token: ApiToken) -> Response:
        trace = await TraceService(self.context.store).show(request.path_params["trace"])
        if trace is None:
            raise ApiError(404, "not_found", "no such trace (pruned after trace.keep_days?)")
        return json_response(trace.as_json())

    async def audit(self, request: Request, token: ApiToken) -> Response:
        text = request.query_params.get("limit", "100")
        if not (text.isascii() and text.isdigit()):
            raise InvalidInput("limit is a number of entries")
        entries = await Operators(self.context.store).audit_log(int(text))
        return json_response([{"id": e.id, "at": _iso(e.at), "actor": e.actor,
                               "action": e.action, "detail": e.detail} for e in entries])

    # --- the table --------------------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/domains", "read", "our domains and their DNS records",
                     self.list_domains, response=s.array(s.DOMAIN_RECORDS)),
            Endpoint("POST", "/domains", "accounts", "add a domain (and make its DKIM keys)",
                     self.add_domain, request=s.obj(name=s.STR), response=s.DOMAIN_RECORDS,
                     status=201),
            Endpoint("GET", "/domains/{domain}", "read", "a domain and its DNS records",
                     self.get_domain, response=s.DOMAIN_RECORDS),
            Endpoint("DELETE", "/domains/{domain}", "accounts",
                     "remove a domain without users or aliases", self.remove_domain,
                     status=204),
            Endpoint("GET", "/users", "read", "users with quota and mailbox sizes",
                     self.list_users, response=s.array(s.USER)),
            Endpoint("POST", "/users", "accounts", "add a user", self.add_user,
                     request=s.obj(address=s.STR, password=s.STR, quota=s.QUOTA,
                                   optional=("quota",)), response=s.USER, status=201),
            Endpoint("GET", "/users/{address}", "read", "one user", self.get_user,
                     response=s.USER),
            Endpoint("DELETE", "/users/{address}", "accounts",
                     "remove a user with all their mail", self.remove_user,
                     response=s.REMOVAL),
            Endpoint("PUT", "/users/{address}/password", "accounts", "set a user's password",
                     self.set_password, request=s.obj(password=s.STR), status=204),
            Endpoint("PUT", "/users/{address}/quota", "accounts",
                     "set (or with null remove) a user's quota in octets", self.set_quota,
                     request=s.obj(quota=s.QUOTA), response=s.USER),
            Endpoint("GET", "/aliases", "read", "aliases and their targets",
                     self.list_aliases, response=s.array(s.ALIAS)),
            Endpoint("POST", "/aliases", "accounts", "make an alias or add targets to it",
                     self.add_alias, request=s.ALIAS, response=s.ALIAS),
            Endpoint("DELETE", "/aliases/{alias}", "accounts", "remove an alias",
                     self.remove_alias, response=s.REMOVAL),
            Endpoint("GET", "/queue", "read", "the outbound queue", self.list_queue,
                     response=s.array(s.QUEUED)),
            Endpoint("POST", "/queue/flush", "queue", "every deferred recipient due now",
                     self.flush, response=s.RESCHEDULED),
            Endpoint("GET", "/queue/{id:int}", "read", "one queued message", self.get_queued,
                     response=s.QUEUED),
            Endpoint("DELETE", "/queue/{id:int}", "queue",
                     "delete a queued message (no bounce is sent)", self.delete_queued,
                     status=204),
            Endpoint("GET", "/queue/{id:int}/content", "queue", "the message as queued",
                     self.queued_content, media_type="message/rfc822"),
            Endpoint("POST", "/queue/{id:int}/retry", "queue",
                     "a message's deferred recipients due now", self.retry,
                     response=s.RESCHEDULED),
            Endpoint("POST", "/queue/{id:int}/bounce", "queue",
                     "give up on a message's pending recipients: they fail and the sender gets "
                     "a DSN (the queue worker, within a second)", self.bounce,
                     status=202, response=s.BOUNCING),
            Endpoint("GET", "/dkim/{domain}", "read", "a domain's DKIM keys and TXT records",
                     self.dkim, response=s.DKIM),
            Endpoint("GET", "/certificate", "read", "the certificate the server presents",
                     self.certificate, response=s.CERTIFICATE),
            Endpoint("GET", "/stats/hourly", "read", "the last 24 hours' steps per hour: "
                     "received, stored, delivered, deferred, bounced, refused",
                     self.hourly, response=s.array(s.HOUR)),
            Endpoint("GET", "/doctor", "read", "run the live checks (`mailhouse doctor`)",
                     self.doctor, response=s.array(s.CHECK),
                     query=(("domain", "string"),)),
            Endpoint("GET", "/trace", "read", "find messages' traces: q is an address, a "
                     "<Message-ID>, a queue id or a trace id", self.find_traces,
                     response=s.array(s.TRACE), query=(("q", "string"), ("limit", "integer"))),
            Endpoint("GET", "/trace/{trace}", "read", "one message's steps", self.show_trace,
                     response=s.TRACE),
            Endpoint("GET", "/audit", "audit", "the newest audit log entries, newest first",
                     self.audit, response=s.array(s.AUDIT), query=(("limit", "integer"),)),
        ]


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    response = error_response(ApiError(404, "not_found", "no such endpoint"))
    await response(scope, receive, send)


def routes(context: AdminContext) -> list[BaseRoute]:
    """The API face (app.ADMIN_FACES): everything under /api/v1/."""
    api = Api(context)
    endpoints = api.endpoints()
    document = openapi(endpoints, PREFIX)

    async def describe_api(request: Request) -> Response:
        return json_response(document)

    inner = make_routes(endpoints, Guard(api.tokens, context.login_throttle),
                        extra=[Route("/openapi.json", describe_api, methods=["GET"])])
    return [Mount(PREFIX, app=Router(inner, default=_not_found))]
