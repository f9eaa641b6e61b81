"""`python -m mailhouse.pop3_process`: one POP3 worker under `mailhouse serve` with
`[pop3] workers` > 1 (worker_process.py). Its own module so that `ps` tells the workers apart."""

from __future__ import annotations

import sys

from mailhouse.worker_process import child_main

if __name__ == "__main__":
    sys.exit(child_main("pop3"))
