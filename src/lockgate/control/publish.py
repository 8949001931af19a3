"""Publishing a version: its files are written to a temporary folder next to the versions,
fsynced, and renamed to the next free version number. `rename` of a folder onto an existing
non-empty folder fails, so two writers racing for one number cannot both win: the loser takes the
next number. A crash leaves either a whole version or a `.tmp-*` folder that `gc_temp` removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from lockgate.errors import ErrorKind, LockgateError
from lockgate.fsutil import fsync_dir, write_synced

TEMP_PREFIX = ".tmp-"


def write_version(folder: Path, files: dict[str, bytes]) -> str:
    """Write `files` into a new version of the model folder `folder`; returns its number."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=temp_prefix(), dir=folder))
    try:
        for file, data in files.items():
            write_synced(temp / file, data)
        fsync_dir(temp)
        return publish(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def publish(temp: Path, folder: Path) -> str:
    """Rename `temp` to the first free version number; retry when another writer wins."""
    for _ in range(1000):
        numbers = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        version = str(max(numbers, default=0) + 1)
        try:
            os.rename(temp, folder / version)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
        fsync_dir(folder)
        return version
    raise LockgateError(ErrorKind.CONFLICT, f"could not publish a version in {folder}")


def gc_temp(root: Path, older_than: float = 600.0) -> int:
    """Remove temporary folders left by crashed writers; returns how many. A folder is
    left alone while it is younger than `older_than` seconds or its writer (named in the
    folder: host and pid) is still running on this host."""
    removed = 0
    cutoff = time.time() - older_than
    for temp in root.glob(f"*/{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if temp.stat().st_mtime < cutoff and not writer_alive(temp.name):
                shutil.rmtree(temp)
                removed += 1
    return removed


def temp_prefix() -> str:
    return f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def writer_alive(folder_name: str) -> bool:
    """Whether the process that made a temporary folder still runs (as far as this host can
    tell: a writer on another host counts as gone once the folder is old enough)."""
    host, _, rest = folder_name.removeprefix(TEMP_PREFIX).rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
