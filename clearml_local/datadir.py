"""The server's data dir is private, and what a killed server left behind is cleaned at start.

* Private: the folder and every folder under it 0700, every file 0600 (database, WAL/SHM,
  ``server.json``, logs, credentials, ``clearml.conf``, uploaded files). The server process runs with
  umask 077, so whatever it creates later is private as well; :func:`secure_tree` also fixes what an
  older version or a copy left readable.
* Clean: an upload writes each file to a hidden temp file beside its target and renames it when the
  request is complete (:mod:`clearml_local.fileserver`); a SIGKILL in between leaves the temp file,
  which no request can reach (the suffix is reserved), so the start removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from pathlib import Path

from clearml_local.fileserver import TEMP_SUFFIX

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
#: Temp files of the atomic writes in the data dir's top folder (``.server.json.<pid>.tmp``).
_ATOMIC_TEMP = re.compile(r"^\..+\.\d+\.tmp$")
#: The process umask that makes new files 0600 and new folders 0700.
PRIVATE_UMASK = 0o077


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """``os.open`` a file that is created 0600 and made 0600 if it existed (returns the fd)."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def _is_stale_temp(data_dir: Path, folder: Path, name: str) -> bool:
    if name.startswith(".") and name.endswith(TEMP_SUFFIX):
        return True
    return folder == data_dir and bool(_ATOMIC_TEMP.match(name))


def secure_tree(data_dir: Path) -> tuple[int, int]:
    """Make ``data_dir`` private (see the module doc) and remove stale temp files (uploads
    anywhere, atomic writes of the server's own files in its top folder).

    Symlinks are neither followed nor changed. Returns ``(modes fixed, temp files removed)``.
    """
    fixed = removed = 0
    make_private_dir(data_dir)
    for folder, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = Path(folder) / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_ISREG(info.st_mode) and _is_stale_temp(data_dir, Path(folder), name):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed += 1
                continue
            wanted = DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
            if stat.S_IMODE(info.st_mode) != wanted:
                os.chmod(path, wanted)
                fixed += 1
    if fixed or removed:
        log.info(
            "data dir %s: %d modes made private, %d stale upload temp files removed", data_dir, fixed, removed
        )
    return fixed, removed
