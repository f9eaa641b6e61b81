"""`python -m mailhouse.imap_process`: one IMAP worker under `mailhouse serve` with
`[imap] workers` > 1 (worker_process.py). Its own module so that `ps` tells the workers apart."""

from __future__ import annotations

import signal
import sys

# First thing: a reload (SIGHUP, passed on by the parent) must not end a worker still starting;
# worker_process catches up with the files once its listeners run.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

from mailhouse.worker_process import child_main  # noqa: E402 (after the line above)

if __name__ == "__main__":
    sys.exit(child_main("imap"))
