"""Writing results safely: outputs checked before any work starts, files replaced atomically.

* :func:`output_file` / :func:`output_dir` — check (and create the folders of) a path a command will
  write to, *before* the model loads, so that a finished analysis is never lost to a bad path;
* :func:`atomic_write_text` — write to a temporary file beside the target, then ``os.replace`` it:
  a reader sees the old file or the new one, never a truncated or mixed one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sd_lens.errors import InputError

__all__ = ["atomic_write_text", "output_dir", "output_file"]


def _writable_dir(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what}: {folder} is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what}: cannot create the folder {folder} ({exc.strerror}); choose a writable path") from exc
    try:  # os.access is not reliable for root or network file systems: try for real
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sd_lens-check-"):
            pass
    except OSError as exc:
        raise InputError(f"{what}: cannot write in {folder} ({exc.strerror}); choose a writable path") from exc


def output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file the caller may write: its folder exists (created) and is writable.

    Raises:
        InputError: the path is a folder, its parent is a file, or the folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what}: {path} is a folder; give a file name (e.g. {path / 'analysis.json'})")
    _writable_dir(path.parent if str(path.parent) else Path("."), what)
    return path


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as a folder the caller may write into (created when missing).

    Raises:
        InputError: the path is a file, or the folder cannot be created or written.
    """
    path = Path(path)
    _writable_dir(path, what)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
