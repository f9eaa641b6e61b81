"""The web admin's operators page: who can log in, adding one, changing a password, removing
one — through service/operators.py, as `mailhouse operator …` does, audited the same way —
and the API tokens (service/api_tokens.py, as `mailhouse operator token …`): an operator makes
tokens for themselves (the secret shown once, in the next page's notice, never stored) and may
revoke anyone's, as operators are equals.

A password changed or an operator removed here ends that operator's sessions (other than the
one making the change), so a leaked password stops working at once. An operator cannot remove
themselves: the last one doing so would lock everyone out of the browser.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailhouse.service.accounts import AccountError
from mailhouse.service.api_tokens import SCOPES, ApiTokens
from mailhouse.web.pages import Kit, action, actor, credential, page
from mailhouse.web.pages_manage import done, show
from mailhouse.web.sessions import Session


async def operators_page(kit: Kit, request: Request, session: Session) -> Response:
    return show(kit, request, session, "operators.html",
                operators=await kit.operators().list_all(), scopes=SCOPES,
                tokens=await tokens(kit).list(), now=kit.context.clock())


def tokens(kit: Kit) -> ApiTokens:
    return ApiTokens(kit.context.store, clock=kit.context.clock)


async def token_add(kit: Kit, request: Request, session: Session,
                    fields: dict[str, str]) -> Response:
    scopes = [scope for scope in SCOPES if fields.get(f"scope_{scope}") == "on"]
    days_text = fields.get("days", "").strip()
    try:
        if days_text and not (days_text.isascii() and days_text.isdigit()):
            raise AccountError("expiry is a number of days, or empty for none")
        new = await tokens(kit).create(session.operator, scopes, actor=actor(session),
                                       label=fields.get("label", "").strip(),
                                       days=int(days_text) if days_text else None)
    except AccountError as exc:
        return done(kit, session, "/operators", str(exc), "error")
    return done(kit, session, "/operators",
                f"Token {new.token.id} made ({' '.join(new.token.scopes)}). Copy it now, it "
                f"is not shown again: {new.secret}")


async def token_revoke(kit: Kit, request: Request, session: Session,
                       fields: dict[str, str]) -> Response:
    text = fields.get("id", "")
    try:
        if not (text.isascii() and text.isdigit()):
            raise AccountError("no such token")
        token = await tokens(kit).revoke(int(text), actor=actor(session))
    except AccountError as exc:
        return done(kit, session, "/operators", str(exc), "error")
    return done(kit, session, "/operators", f"Token {token.id} of {token.admin} revoked.")


async def operator_add(kit: Kit, request: Request, session: Session,
                       fields: dict[str, str]) -> Response:
    name = fields.get("name", "").strip().lower()
    try:
        await kit.operators().add(name, fields.get("password", ""), actor(session))
    except AccountError as exc:
        return done(kit, session, "/operators", str(exc), "error")
    return done(kit, session, "/operators", f"Operator {name} added.")


async def operator_password(kit: Kit, request: Request, session: Session,
                            fields: dict[str, str]) -> Response:
    name = fields.get("name", "")
    password = fields.get("password", "")
    try:
        if password != fields.get("password2", ""):
            raise AccountError("the two passwords differ")
        await kit.operators().set_password(name, password, actor(session))
    except AccountError as exc:
        return done(kit, session, "/operators", str(exc), "error")
    await end_other_sessions(kit, name, session)
    return done(kit, session, "/operators", f"The password of {name} is changed.")


async def operator_remove(kit: Kit, request: Request, session: Session,
                          fields: dict[str, str]) -> Response:
    name = fields.get("name", "")
    if name == session.operator:
        return done(kit, session, "/operators", "You cannot remove yourself; another operator "
                                                "can, or `mailhouse operator remove`.", "error")
    try:
        await kit.operators().remove(name, actor(session))
    except AccountError as exc:
        return done(kit, session, "/operators", str(exc), "error")
    kit.sessions.end_operator(name)
    return done(kit, session, "/operators", f"Operator {name} removed.")


async def end_other_sessions(kit: Kit, name: str, keep: Session) -> None:
    """(The sessions would end anyway at their next request, their credential being stale;
    this frees them now.) The operator changing their own password stays logged in here."""
    kit.sessions.end_operator(name)
    admin = await kit.context.store.get_admin(name)
    if keep.operator == name and admin is not None:
        keep.credential = credential(admin.password_hash)
        kit.sessions.adopt(keep)


def routes(kit: Kit) -> list[BaseRoute]:
    return [
        Route("/operators", page(kit, operators_page), methods=["GET"]),
        Route("/operators/add", action(kit, operator_add), methods=["POST"]),
        Route("/operators/password", action(kit, operator_password), methods=["POST"]),
        Route("/operators/remove", action(kit, operator_remove), methods=["POST"]),
        Route("/tokens/add", action(kit, token_add), methods=["POST"]),
        Route("/tokens/revoke", action(kit, token_revoke), methods=["POST"]),
    ]
