"""Directories `serve`'s processes share under data_dir/run (metrics, recent errors)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fresh_shared_dir(data_dir: Path, parts: tuple[str, ...], env: str) -> Path:
    """The main process, before any child starts: the directory emptied (the last run's
    processes are gone) and named in `env`, which the children inherit."""
    directory = data_dir.joinpath(*parts)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[env] = str(directory)
    return directory
