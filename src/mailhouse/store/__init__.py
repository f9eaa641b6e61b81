"""Storage: one narrow interface (base.py), chosen implementations behind `open_store`.

Nothing outside this package names an implementation module: callers get a `Store` and that is
all they may rely on (DESIGN.md, Store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mailhouse.store.base import Store
from mailhouse.store.wakeup import Wakeups

StoreKind = Literal["sqlite", "memory"]
STORE_KINDS: tuple[StoreKind, ...] = ("sqlite", "memory")


def open_store(data_dir: Path, kind: str = "sqlite", *,
               wakeups: Wakeups | None = None) -> Store:
    """A store for `data_dir`, not yet opened: the caller awaits `store.open()` (which creates or
    migrates the schema and reaps crash leftovers) and later `store.close()`.

    "memory" ignores `data_dir` and keeps everything in memory (tests only).
    """
    if kind == "sqlite":
        from mailhouse.store.sqlite import SqliteStore  # sqlite3 only when asked for

        return SqliteStore(Path(data_dir))
    if kind == "memory":
        from mailhouse.store.memory import MemoryStore

        return MemoryStore()
    raise ValueError(f"unknown store kind {kind!r}; expected one of {', '.join(STORE_KINDS)}")


__all__ = ["STORE_KINDS", "Store", "StoreKind", "open_store"]
