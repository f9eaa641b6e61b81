"""Enough file descriptors for the connection caps (issue 7, finding 5).

`limits.max_connections` bounds the sessions of one process, but each session is a descriptor,
and the soft RLIMIT_NOFILE many systems start services with is 1024: with the default cap of
1000 and the store, the listeners, the logs and the queue's outbound connections, a flood would
reach EMFILE before the cap and every port would stop accepting. So at start the soft limit is
raised towards the hard limit (what an unprivileged process may do), and when even the hard
limit is short of the caps the administrator is told which key to lower or which limit to raise.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("mailhouse.fdlimit")

# Descriptors that are not sessions: listeners, the store and its WAL, logs, pipes to the
# children, outbound connections of the queue, DNS.
RESERVE = 256


def ensure_fd_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to cover `max_connections` + RESERVE when the hard limit
    allows; warn when it does not. Returns the soft limit in force."""
    needed = max_connections + RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError) as exc:
                log.warning("event=fdlimit.raise_failed wanted=%d error=%s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("event=fdlimit.too_low soft=%d needed=%d fix=%s", soft, needed,
                    "raise LimitNOFILE (systemd) or ulimit -n, or lower limits.max_connections")
    return soft
