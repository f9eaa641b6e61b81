"""`mailhouse trace QUERY`: where did that message go? Every step of the messages QUERY names
(an address, a <Message-ID>, a queue id, or the id from "queued as ..." and the Received
header), from reception to delivery, deferral or bounce (service/trace.py).

It opens the store directly, as every admin command, so it works whether the server runs or
not; steps reach the store within a second of happening (service/trace_recorder.py). Exit codes
as the rest of the CLI: 0 found, 1 nothing found or the store failed, 2 usage. Times are UTC.
This module is imported by __main__ (which wires `register`), so it must not import it back.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import partial

from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error, out
from mailhouse.cli_queue import StoreRunner, run_with_store
from mailhouse.config import Config
from mailhouse.service.trace import (
    DEFAULT_TRACES,
    MAX_TRACES,
    Trace,
    TraceQueryError,
    TraceService,
    iso_time,
)
from mailhouse.store.base import Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = (),
             run: StoreRunner | None = None) -> None:
    p = subparsers.add_parser(
        "trace", parents=list(parents),
        help="every step of a message: received from where, delivered where, deferred or "
             "bounced and why",
        description="Find messages by sender or recipient address, <Message-ID>, outbound "
                    "queue id (`mailhouse queue list`) or trace id (the id in 'queued as ...' "
                    "and in the Received header), and print each one's steps in order.")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--json", action="store_true", help="print JSON (one object, 'traces')")
    p.add_argument("--limit", type=int, default=DEFAULT_TRACES,
                   help=f"messages to show, newest first (default {DEFAULT_TRACES}, "
                        f"at most {MAX_TRACES})")
    p.set_defaults(handler=partial(trace_command, run=run or run_with_store))


def trace_command(args: argparse.Namespace, config: Config, *, run: StoreRunner) -> int:
    try:
        TraceService.check(args.query, args.limit)
    except TraceQueryError as exc:
        error(str(exc))
        return EXIT_USAGE

    async def action(store: Store) -> int:
        traces = await TraceService(store).find(args.query, limit=args.limit)
        if args.json:
            out(json.dumps({"traces": [t.as_json() for t in traces]}, ensure_ascii=False,
                           indent=2))
        else:
            for n, trace in enumerate(traces):
                if n:
                    out("")
                _print(trace)
        if not traces:
            error(f"no message found for {args.query!r} (steps are kept "
                  f"{config.trace.keep_days} days)")
            return EXIT_FAILED
        return EXIT_OK

    return run(config, action)


def _print(trace: Trace) -> None:
    out(f"trace {trace.trace}  {trace.message_id or '(no Message-ID)'}")
    out(f"  from <{trace.sender}> to {', '.join(f'<{r}>' for r in trace.recipients) or '-'}")
    for step in trace.steps:
        queue = f" [queue {step.queue_id}]" if step.queue_id else ""
        out(f"  {iso_time(step.at)}  {step.kind:<10} {step.description}{queue}")
