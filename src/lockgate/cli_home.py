"""Where the state directory (`--home`, or LOCKGATE_HOME) is, and which commands may create it.

The default, `lockgate-home`, is relative to the working directory: run from another folder it
names a folder that does not exist. Reading from a home that is not there would answer "no
models" (or serve nothing) about the wrong place, so:
- commands that read a home (`models list`, `models show`, `retrain`) refuse a missing one,
  naming the absolute path they looked at;
- `serve` creates a new home only when asked (`--init`, or `--demo`, which fills it), only
  inside a folder that exists, and says so in its log.
`models register` creates the home it publishes into, as it always has.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lockgate.errors import ErrorKind, LockgateError

log = logging.getLogger("lockgate")
_WHERE = "point --home (or LOCKGATE_HOME) at an existing home"


def _absolute(home: Path | str) -> Path:
    return Path(home).expanduser().absolute()


def _not_a_folder(path: Path) -> LockgateError:
    return LockgateError(ErrorKind.INVALID, f"the lockgate home {path} is not a directory")


def existing_home(home: Path | str) -> Path:
    """The home as an absolute path; NOT_FOUND naming that path when there is none."""
    path = _absolute(home)
    if path.is_dir():
        return path
    if path.exists():
        raise _not_a_folder(path)
    raise LockgateError(ErrorKind.NOT_FOUND, f"no lockgate home at {path}: {_WHERE}")


def serve_home(home: Path | str, *, create: bool) -> Path:
    """The home `serve` runs on: an existing one, or with `create` a new empty folder whose
    parent exists (a typo in the parent is an error rather than a new tree of folders)."""
    path = _absolute(home)
    if path.is_dir():
        return path
    if path.exists():
        raise _not_a_folder(path)
    if not create:
        raise LockgateError(
            ErrorKind.NOT_FOUND,
            f"no lockgate home at {path}: {_WHERE}, or add --init to create a new empty one",
        )
    if not path.parent.is_dir():
        raise LockgateError(
            ErrorKind.NOT_FOUND,
            f"cannot create the lockgate home {path}: the folder {path.parent} does not exist",
        )
    path.mkdir()
    log.warning("new empty home at %s", path)
    return path
