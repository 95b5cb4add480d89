"""Atomic file writes: the one way this package writes a file that must never be seen half-written.

The content goes to a temporary file in the destination's folder (``.NAME.PID.tmp``), is flushed to disk (fsync),
then renamed over the destination (an atomic replace on POSIX) and the folder entry is synced too. A kill at any
moment leaves either the previous file or the new one under the destination's name, plus at worst a stale
temporary file that matches :data:`TEMP_GLOB`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TEMP_GLOB = ".*.tmp"  # what an interrupted atomic_write can leave behind


def fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, content: bytes | str | Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write ``content`` (bytes, UTF-8 text, or a function that writes into the binary file it is given) to ``path``
    atomically; creates the folder if needed and returns the path. ``mode``: the file's permissions. Writing goes
    through a Python file object, so a full disk raises OSError (ENOSPC)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def read_document(
    path: str | Path, parse: Callable[[str], Any], what: str, kind: str, errors: tuple, error: type = ValueError
) -> Any:
    """Parse a UTF-8 text file of format ``kind`` (e.g. JSON); a missing file, or one of ``errors`` raised by
    ``parse`` (then as ``error``), becomes a one-line error that names ``what`` and the path."""
    path = Path(path)
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (*errors, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid {kind}: {err}") from None
