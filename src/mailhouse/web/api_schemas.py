"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of the admin API's bodies: what
web/api.py sends and takes, for web/api_openapi.py."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
QUOTA: Schema = {"type": ["integer", "null"], "minimum": 0,
                 "description": "octets; null: no limit"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(*, optional: tuple[str, ...] = (), **properties: Schema) -> Schema:
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in optional]}


DOMAIN_RECORDS = obj(name=STR, users=INT, aliases=INT, records=array(
    {"type": "string", "description": "a zone-file line (RFC 1035 §5.1)"}))
USER = obj(address=STR, mailboxes=INT, messages=INT, used=INT, quota=QUOTA)
REMOVAL = obj(removed=STR, aliases_changed=array(STR), aliases_removed=array(STR))
ALIAS = obj(alias=STR, targets=array(STR))
RECIPIENT = obj(address=STR, status={"enum": ["pending", "delivered", "failed"]},
                attempts=INT, next_attempt=TIME, last_reply={"type": ["string", "null"]})
QUEUED = obj(id=INT, sender=STR, size=INT, created=TIME, recipients=array(RECIPIENT),
             bounce_requested=BOOL)
RESCHEDULED = obj(rescheduled=INT)
BOUNCING = obj(bouncing={"type": "integer", "description": "pending recipients the queue worker "
                         "fails at its next round (the sender gets one DSN)"})
DKIM = obj(domain=STR, keys=array(obj(selector=STR, algorithm=STR, name=STR, txt=STR)))
RENEWAL = {"type": ["object", "null"], "description": "ACME renewal (null: ACME off or no "
           "attempt yet)", "properties": {
               "failing": BOOL, "failures": INT, "last_attempt": TIME, "last_success": TIME,
               "last_error": {"type": ["string", "null"]}, "next_check": TIME}}
CERTIFICATE = obj(path=STR, subject=STR, issuer=STR, names=array(STR), not_before=TIME,
                  not_after=TIME, days_left=INT, self_signed=BOOL, acme=BOOL, renewal=RENEWAL)
HOUR = obj(hour=TIME, received=INT, stored=INT, delivered=INT, deferred=INT, bounced=INT,
           refused=INT)
CHECK = obj(name=STR, status={"enum": ["ok", "warn", "fail", "skip"]}, found=STR,
            why_it_matters=STR, fix=STR)
STEP = obj(at={"type": "number"}, time=STR, kind=STR, sender=STR, recipient=STR,
           queue_id=INT, description=STR, detail={"type": "object"})
TRACE = obj(trace=STR, message_id=STR, sender=STR, recipients=array(STR), first=STR, last=STR,
            outcome=STR, steps=array(STEP))
AUDIT = obj(id=INT, at=TIME, actor=STR, action=STR, detail=STR)
ERROR = obj(error=STR, detail=STR)
