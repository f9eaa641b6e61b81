"""`mailhouse backup DEST` and `mailhouse restore SRC`: the whole data directory, copied while
the server runs, and put back into an empty one.

A backup holds the store (a consistent snapshot: store/sqlite_backup.py), the DKIM keys and
the TLS files the server made or keeps in data_dir, and a manifest. It leaves out what only a
running server uses (locks, wake-up sockets, the WAL of the live database). A restore refuses a
data directory that is not empty, so it can never mix two servers' mail or run under a live
server; it checks the backup (database integrity, every message file present) before copying,
and opens the store once afterwards, so an older backup is migrated there and then.

Both run as the data directory's owner, as every store command does (cli_common); DEST must be
a place that account can write (docs/operations.md, "Backup and restore").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailhouse import __version__
from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, become_data_dir_owner, error, out
from mailhouse.config import Config
from mailhouse.errors import ConfigError, MailError
from mailhouse.store import open_store
from mailhouse.store.blobs import sync_dir, sync_file
from mailhouse.store.schema import latest_version
from mailhouse.store.sqlite import DB_NAME
from mailhouse.store.sqlite_backup import DamagedBackup, StoreCopy, backup, restore

MANIFEST = "mailhouse-backup.json"
# What else of data_dir a server needs back: DKIM keys, its own TLS pair, the try-it-now
# password. Everything else there is made again at start (locks, wake-up sockets).
EXTRA_DIRS = ("dkim", "tls")
EXTRA_FILES = ("demo-password",)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *,
             parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    p = subparsers.add_parser("backup", parents=list(parents),
                              help="copy the whole data directory (the server may run)")
    p.add_argument("dest", metavar="DEST", type=Path,
                   help="a directory that does not exist yet, or an empty one")
    p.set_defaults(handler=backup_command)
    p = subparsers.add_parser("restore", parents=list(parents),
                              help="put a backup into an empty data directory")
    p.add_argument("src", metavar="SRC", type=Path, help="a directory `mailhouse backup` made")
    p.set_defaults(handler=restore_command)


def backup_command(args: argparse.Namespace, config: Config) -> int:
    data_dir = config.data_dir
    try:
        become_data_dir_owner(config)
        if not (data_dir / DB_NAME).is_file():
            error(f"{data_dir} holds no mailhouse database: nothing to back up")
            return EXIT_FAILED
        dest = Path(args.dest)
        _empty_dir(dest)
        started = time.time()
        copied = backup(data_dir, dest)
        extras = _copy_extras(data_dir, dest)
        _write_manifest(dest, config, copied, started)
    except (OSError, sqlite3.Error, _Refused) as exc:
        error(_reason(exc))
        return EXIT_FAILED
    out(f"backed up {data_dir} to {dest}: {copied.files} message files "
        f"({copied.octets} octets), {extras} other files")
    if copied.dropped:
        out(f"  {copied.dropped} messages removed while the backup ran are not in it")
    return EXIT_OK


def restore_command(args: argparse.Namespace, config: Config) -> int:
    data_dir = config.data_dir
    src = Path(args.src)
    try:
        become_data_dir_owner(config)  # creates data_dir for the configured user if missing
        manifest = _read_manifest(src)
        _empty_dir(data_dir)
        copied = restore(src, data_dir)
        extras = _copy_extras(src, data_dir)
        _open_once(data_dir)
    except (OSError, sqlite3.Error, _Refused, DamagedBackup) as exc:
        error(_reason(exc))
        return EXIT_FAILED
    out(f"restored {src} (made {manifest.get('created', '?')}) into {data_dir}: "
        f"{copied.files} message files, {extras} other files")
    return EXIT_OK


class _Refused(Exception):
    """A precondition the operator can fix; the message says how."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def _empty_dir(path: Path) -> None:
    """`path` as an empty directory of ours: made if missing, refused if it holds anything."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise _Refused(f"{path} exists and is not a directory") from None
        if any(path.iterdir()):
            raise _Refused(f"{path} is not empty: give a new directory (a restore never "
                           "mixes into existing data; move the old data directory away)") from None
    sync_dir(path.parent)


def _copy_extras(source: Path, target: Path) -> int:
    copied = 0
    for name in EXTRA_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, symlinks=False,
                            copy_function=shutil.copyfile)
            for root, dirs, files in os.walk(target / name):
                for item in files:
                    sync_file(Path(root) / item)
                    copied += 1
                sync_dir(Path(root))
                dirs.sort()
    for name in EXTRA_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            sync_file(target / name)
            copied += 1
    sync_dir(target)
    return copied


def _write_manifest(dest: Path, config: Config, copied: StoreCopy, started: float) -> None:
    with sqlite3.connect(dest / DB_NAME) as conn:
        schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
    doc = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "mailhouse": __version__, "schema": schema, "hostname": config.hostname,
           "message_files": copied.files, "octets": copied.octets}
    path = dest / MANIFEST
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    sync_file(path)
    sync_dir(dest)


def _read_manifest(src: Path) -> dict[str, Any]:
    try:
        doc = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Refused(f"{src} is not a mailhouse backup (no {MANIFEST})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refused(f"{src / MANIFEST} is damaged: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise _Refused(f"{src / MANIFEST}: not a backup format this release reads")
    schema = doc.get("schema")
    if not isinstance(schema, int) or schema > latest_version():
        raise _Refused(f"{src} was made by a newer mailhouse (schema {schema}; this release "
                       f"reads up to {latest_version()}): restore it with that release")
    return doc


def _open_once(data_dir: Path) -> None:
    """Open the restored store once: an older backup's schema is migrated now, and a store
    that cannot open is reported here rather than at the server's start."""
    import asyncio

    async def run() -> None:
        store = open_store(data_dir)
        await store.open()
        await store.close()

    try:
        asyncio.run(run())
    except (MailError, ConfigError) as exc:
        raise _Refused(f"the restored store does not open: {exc}") from None
