"""Writing files atomically: a crash at any moment leaves either the old file or the new one."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any moment leaves either the old file or the new one:
    a temporary file in the same folder, fsync, then os.replace (atomic on POSIX and Windows)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):            # mkstemp makes 0o600, which would hide the file from others
            os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_directory(tmp: Path, target: Path, aside_prefix: str) -> Path:
    """Put the fully written directory ``tmp`` at ``target`` so that a crash leaves the old or the new one.

    Every file in ``tmp`` is flushed to disk and given ordinary permissions (mkdtemp/mkstemp make them
    private); an existing ``target`` is first renamed to a sibling starting with ``aside_prefix`` (so a
    reader can recover it if the process dies between the two renames), then ``tmp`` is renamed into
    place and the old directory deleted.
    """
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(f, 0o666 & ~umask)
    os.chmod(tmp, 0o777 & ~umask)
    _fsync_dir(tmp)
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=aside_prefix, dir=target.parent))
        os.rmdir(aside)
        os.replace(target, aside)                                # 1: the old directory aside
    os.replace(tmp, target)                                      # 2: the new one in place
    _fsync_dir(target.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def recover_directory(target: Path, aside_prefix: str) -> None:
    """Undo a crash between ``install_directory``'s two renames: if ``target`` is missing but a directory
    moved aside (``aside_prefix``*) exists, rename the newest back; delete any older ones."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    aside = sorted(target.parent.glob(aside_prefix + "*"))
    if not target.exists() and aside:
        os.replace(aside[-1], target)
        aside = aside[:-1]
    for old in aside:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
