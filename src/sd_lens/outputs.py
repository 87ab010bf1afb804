"""Writing results safely, as a careful Unix tool does.

* :func:`output_file` / :func:`output_dir` — check a path a command will write to, *before* the
  model loads, so that a finished analysis is never lost to a bad path. They create nothing: a run
  refused later (a bad device, say) leaves no folder behind; the folders are created when the
  result is written.
* :func:`atomic_write_text` / :func:`atomic_write_bytes` — write a result:

  - a regular file (or a new one) through a temporary file beside it and ``os.replace``: a reader
    sees the old file or the new one, never a truncated or mixed one. A new file gets the mode the
    umask allows (``0o666 & ~umask``, as ``open`` would), an existing one keeps its mode;
  - a symbolic link is followed: its target is written (atomically), the link stays;
  - ``-`` is standard output, and a special file (``/dev/stdout``, a pipe, a terminal, a device)
    is written directly, never replaced;
  - a temporary file is removed when the write fails, on ``KeyboardInterrupt`` (SIGINT) and on
    SIGTERM (the process then dies of the signal, as it would have); temporary files a killed
    earlier run left (``.NAME.PID.XXXXXXXX.tmp`` whose process is gone, or any older than
    :data:`STALE_AFTER_S`) are removed by the next write of the same file.

  A file with several hard links is replaced like any other: the name written gets the new
  content, the other links keep the old one (as with ``sed -i``).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from sd_lens.errors import InputError, OutputError

__all__ = [
    "STALE_AFTER_S", "STDOUT", "atomic_write_bytes", "atomic_write_text", "is_stdout", "notes_stream", "output_dir",
    "output_file", "writes_in_place",
]

#: the path that means standard output
STDOUT = "-"
#: a temporary file of an earlier write older than this (seconds) is removed even if its process lives
STALE_AFTER_S = 15 * 60


def is_stdout(path: str | Path | None) -> bool:
    """True for ``-`` (standard output)."""
    return path is not None and str(path) == STDOUT


def _special(path: Path) -> bool:
    """True when ``path`` (symlinks followed) exists and is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def writes_in_place(path: str | Path | None) -> bool:
    """True when a write to ``path`` goes straight to it rather than through a temporary file:
    ``-`` and special files (``/dev/stdout``, a pipe, a device)."""
    return path is not None and (is_stdout(path) or _special(Path(path)))


def notes_stream(path: str | Path | None) -> TextIO:
    """Where a command prints its human notes ("JSON written to ..."): standard error when the result
    itself may go to standard output (``-`` or a special file), standard output otherwise."""
    return sys.stderr if writes_in_place(path) else sys.stdout


def _target(path: Path, what: str) -> Path:
    """The file a write of ``path`` changes: ``path``, or the final target of a symbolic link."""
    if not path.is_symlink():
        return path
    try:
        os.stat(path)
    except FileNotFoundError:  # a dangling link: its target is created
        pass
    except OSError as exc:
        raise InputError(f"{what}: cannot follow the link {path} ({exc.strerror}); choose another path") from exc
    return Path(os.path.realpath(path))


def _read_only(path: Path) -> bool:
    """True for an existing file nobody may write (no write bit), or that this process may not write."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return mode & 0o222 == 0 or not os.access(path, os.W_OK)


def _check_folder(folder: Path, what: str) -> None:
    """Raise unless ``folder`` is, or could be created as, a writable folder; creates nothing."""
    missing: list[Path] = []
    here = folder
    while not here.exists():
        if here.is_symlink():  # a dangling link where a folder should be
            raise InputError(f"{what}: {here} is a broken symbolic link, not a folder; choose another path")
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    if not here.is_dir():
        raise InputError(f"{what}: {here} is a file, not a folder; choose another path")
    try:  # os.access is not reliable for root or network file systems: try for real
        with tempfile.NamedTemporaryFile(dir=here, prefix=".sd_lens-check-"):
            pass
    except OSError as exc:
        if missing:
            raise InputError(
                f"{what}: cannot create the folder {missing[-1]} in {here} ({exc.strerror}); choose a writable path"
            ) from exc
        raise InputError(f"{what}: cannot write in {folder} ({exc.strerror}); choose a writable path") from exc


def output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file the caller may write (checked; nothing is created).

    ``-`` (standard output) and special files (a pipe, ``/dev/stdout``) pass when writable; a
    symbolic link is checked at its target.

    Raises:
        InputError: the path is a folder, its parent is a file, the folder is not writable, or the
            file is read-only.
    """
    if is_stdout(path):
        return Path(STDOUT)
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what}: {path} is a folder; give a file name (e.g. {path / 'analysis.json'})")
    if _special(path):
        if not os.access(path, os.W_OK):
            raise InputError(f"{what}: {path} is not writable; choose another path")
        return path
    target = _target(path, what)
    if target.is_dir():
        raise InputError(f"{what}: {path} leads to the folder {target}; give a file name")
    if _read_only(target):
        shown = path if target == path else f"{path} (a link to {target})"
        raise InputError(
            f"{what}: {shown} is read-only; make it writable (chmod u+w) or choose another path"
        )
    _check_folder(target.parent if str(target.parent) else Path("."), what)
    return path


def output_dir(path: str | Path, what: str = "output folder", *, files: tuple[str, ...] = (),
               create: bool = False) -> Path:
    """``path`` as a folder the caller may write into, and ``files`` in it as files it may write.

    Checked only, unless ``create`` (then the folder is created when missing).

    Raises:
        InputError: the path is a file, the folder cannot be created or written, or one of ``files``
            in it is a folder or read-only.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what}: {path} is a file, not a folder; choose another path")
    _check_folder(path, what)
    for name in files:
        output_file(path / name, f"{what}: {name}" if what else name)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{what}: cannot create the folder {path} ({exc.strerror}); choose a writable path") from exc
    return path


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and put back (another thread could see the interim value)
        old = os.umask(0o022)
        os.umask(old)
    return old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, and is someone else's
        return True
    return True


def _clean_stale(folder: Path, name: str) -> None:
    """Remove temporary files an earlier write of ``folder/name`` left (its process died, or it is old)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp$")
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            pid = int(m.group(1)) if m.group(1) else None
            dead = pid is not None and pid != os.getpid() and not _alive(pid)
            if dead or now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
                os.unlink(entry.path)
        except OSError:
            continue


class _Terminated(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Inside: SIGTERM raises (so the write's cleanup runs), then the process dies of the signal.

    Only in the main thread and only when SIGTERM has its default action (a program with its own
    handler keeps it). SIGINT needs nothing: it raises ``KeyboardInterrupt`` already.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated as exc:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), exc.signum)  # die of the signal, as the sender meant
        raise SystemExit(128 + exc.signum) from None  # pragma: no cover - only if the signal is blocked
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_direct(path: str | Path, data: bytes) -> Path:
    if is_stdout(path):
        stream = sys.stdout
        try:
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()
                buffer.write(data)
                buffer.flush()
            else:  # a replaced sys.stdout without bytes
                stream.write(data.decode("utf-8"))
                stream.flush()
        except OSError as exc:
            raise OutputError(f"cannot write to standard output ({exc.strerror})") from exc
        return Path(STDOUT)
    path = Path(path)
    try:
        with open(path, "wb") as f:  # a device or a pipe: written as it is, never replaced
            f.write(data)
            f.flush()
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror})") from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path``: atomically for a regular file (symlinks followed), directly to ``-``
    (standard output) or a special file; the folders are created when missing. Returns ``path``.

    Raises:
        OutputError: the write failed, or the file is read-only (nothing half-written is left, the old
            file is untouched).
    """
    if writes_in_place(path):
        return _write_direct(path, data)
    path = Path(path)
    target = _target(path, str(path))
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {folder} ({exc.strerror})") from exc
    _clean_stale(folder, target.name)
    try:
        old = os.stat(target)
    except OSError:
        old = None
    if old is not None and _read_only(target):  # made read-only since the check, or never checked
        raise OutputError(f"cannot write {path}: it is read-only; make it writable (chmod u+w) or choose another path")
    mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~_umask()
    tmp: str | None = None
    with _terminate_cleanly():
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    try:  # keep the owner where allowed (root writing a user's file)
                        os.fchown(f.fileno(), old.st_uid, old.st_gid)
                    except OSError:
                        pass
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror}); nothing was changed") from exc
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` as :func:`atomic_write_bytes` does."""
    return atomic_write_bytes(path, text.encode("utf-8"))
