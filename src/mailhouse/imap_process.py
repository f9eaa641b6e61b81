"""`python -m mailhouse.imap_process`: one IMAP worker under `mailhouse serve` with
`[imap] workers` > 1 (worker_process.py). Its own module so that `ps` tells the workers apart."""

from __future__ import annotations

import sys

from mailhouse.worker_process import child_main

if __name__ == "__main__":
    sys.exit(child_main("imap"))
