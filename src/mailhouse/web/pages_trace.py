"""The web admin's message trace (issue 9 §2): "where did this mail go?" answered by the same
service as `mailhouse trace` and `/api/v1/trace` (service/trace.py) — search by sender,
recipient, Message-ID, queue id or trace id, then every step of each message found.
Read-only: a GET form, so nothing here needs a CSRF token.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailhouse.service.trace import TraceQueryError, TraceService
from mailhouse.web.pages import Kit, page
from mailhouse.web.pages_manage import show
from mailhouse.web.sessions import Session

TRACES_SHOWN: Final = 20  # messages one search shows (service/trace.py allows up to 100)
MAX_QUERY: Final = 1000  # characters of a query (the store's field limit)
OUTCOMES: Final = {"delivered": "ok", "stored": "ok", "deferred": "warn", "queued": "warn",
                   "bounced": "fail", "rejected": "fail", "refused": "fail",
                   "not_stored": "fail", "delete": "fail"}


async def trace_page(kit: Kit, request: Request, session: Session) -> Response:
    query = request.query_params.get("q", "").strip()[:MAX_QUERY]
    traces, problem = [], None
    if query:
        try:
            traces = await TraceService(kit.context.store).find(query, limit=TRACES_SHOWN)
        except TraceQueryError as exc:
            problem = str(exc)
    return show(kit, request, session, "trace.html", query=query, traces=traces,
                problem=problem, outcomes=OUTCOMES, searched=bool(query))


async def one_trace_page(kit: Kit, request: Request, session: Session) -> Response:
    trace = await TraceService(kit.context.store).show(request.path_params["trace"][:MAX_QUERY])
    if trace is None:
        return kit.message(request, 404, "No such trace (pruned after trace.keep_days?).",
                           session)
    return show(kit, request, session, "trace.html", query=trace.trace, traces=[trace],
                problem=None, outcomes=OUTCOMES, searched=True)


def routes(kit: Kit) -> list[BaseRoute]:
    return [Route("/trace", page(kit, trace_page), methods=["GET"]),
            Route("/trace/{trace}", page(kit, one_trace_page), methods=["GET"])]
