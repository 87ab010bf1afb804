"""Text to analyse: a fixed default corpus from CPython's own docs, or yours.

The default corpus is English prose that ships with every CPython (``pydoc_data.topics``, the
reference manual's topics), so it is always present and identical on every machine with the same
Python minor version: lines longer than 40 characters, grammar lines (containing ``::=``) and
code-like lines (no space, or starting with ``>>>``) dropped, topics in sorted order, then every
``stride``-th line (then the lines after those) until ``n_lines`` are taken.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

from sd_lens.errors import InputError

DEFAULT_N_LINES = 48
#: the most bytes a text file may hold (sd-lens: ``--max-text-bytes``): 16 MiB
DEFAULT_MAX_TEXT_BYTES = 16 * 2**20
_CHUNK = 2**20


def _prose_lines() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for line in topics[key].splitlines():
            s = line.strip()
            if len(s) > 40 and "::=" not in s and " " in s and not s.startswith((">>>", "...")):
                out.append(s)
    return out


def check_held_out(texts: Sequence[str], held: Sequence[str], corpus: str) -> None:
    """Raise :class:`InputError` when a held-out text is also in ``texts`` (``corpus`` names them in the
    message): a measurement on held-out text must not see the texts its findings came from."""
    overlap = set(texts) & set(held)
    if overlap:
        raise InputError(f"{len(overlap)} held-out text(s) are also in the {corpus}, e.g. {next(iter(overlap))!r}")


def held_out_texts(texts: Sequence[str], n_lines: int = DEFAULT_N_LINES) -> list[str]:
    """``n_lines`` lines of the default corpus's source that are not in ``texts``, for held-out measurements.

    The default corpus's order, starting after its first ``len(texts)`` lines (so that for
    ``texts = default_corpus(n)`` they are the ``n_lines`` lines after it), skipping any line of
    ``texts``; fewer when the source runs out.
    """
    lines = _prose_lines()
    order = sorted(range(len(lines)), key=lambda i: (i % 37, i))
    start = min(len(texts), len(order))
    seen = set(texts)
    out: list[str] = []
    for i in order[start:] + order[:start]:
        if lines[i] not in seen:
            out.append(lines[i])
            if len(out) == n_lines:
                break
    return out


def default_corpus(n_lines: int = DEFAULT_N_LINES, stride: int = 37) -> list[str]:
    """``n_lines`` prose lines from ``pydoc_data.topics`` (deterministic; see module doc)."""
    lines = _prose_lines()
    if not 1 <= n_lines <= len(lines):
        raise InputError(f"n_lines must be in 1..{len(lines)} (the prose lines available), got {n_lines}")
    # every stride-th line, then the next offset, ...: spread over all topics, never repeating
    order = sorted(range(len(lines)), key=lambda i: (i % stride, i))
    return [lines[i] for i in order[:n_lines]]


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_bounded(stream: BinaryIO, max_bytes: int, name: str) -> bytes:
    """At most ``max_bytes`` of ``stream``, read in chunks; an :class:`InputError` as soon as there is more."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise InputError(
                f"text file {name} holds more than {max_bytes} bytes, the limit (sd-lens: --max-text-bytes; "
                "read_texts: max_bytes); raise it, or give a smaller file"
            )


def read_text_file(path: str | Path, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> list[str]:
    """The non-empty lines (stripped) of a UTF-8 text file, with or without a byte-order mark.

    ``-`` reads standard input (a pipe asked for explicitly); any other path must be a regular file
    (a FIFO, a device such as ``/dev/zero`` or a folder is refused at once, before anything waits on
    it). At most ``max_bytes`` are read: a longer input is refused without reading the rest.

    Raises:
        InputError: a missing, unreadable, non-regular, oversized, non-UTF-8 or empty file.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InputError(f"max_bytes={max_bytes!r}: give a positive number of bytes")
    name = str(path)
    if name == "-":
        name = "- (standard input)"
        if sys.stdin is None:
            raise InputError("text file -: there is no standard input to read")
        if sys.stdin.isatty():
            print("sd-lens: reading texts from standard input, one per line (end with Ctrl-D)", file=sys.stderr)
        raw = _read_bounded(sys.stdin.buffer, max_bytes, name)
    else:
        try:  # O_NONBLOCK: opening a FIFO with no writer returns at once (and is then refused)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise InputError(f"cannot read text file {path}: {exc.strerror}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            os.close(fd)
            if stat.S_ISDIR(info.st_mode):
                raise InputError(f"text file {path} is a folder; give a text file, one text per line")
            if not stat.S_ISREG(info.st_mode):
                raise InputError(
                    f"text file {path} is {_kind(info.st_mode)}, not a regular file; to read a pipe or a device, "
                    f"pass it as standard input (sd-lens: --text-file - < {path})"
                )
            raise InputError(
                f"text file {path} has {info.st_size} bytes, more than the limit of {max_bytes} "
                "(sd-lens: --max-text-bytes; read_texts: max_bytes); raise it, or give a smaller file"
            )
        with os.fdopen(fd, "rb") as f:
            try:
                raw = _read_bounded(f, max_bytes, name)
            except OSError as exc:
                raise InputError(f"cannot read text file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not text: dropped
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"cannot read text file {name}: not UTF-8 (byte {exc.start}, line {line}: {exc.reason}); "
            "save it as UTF-8"
        ) from exc
    # a mark left inside (files concatenated) is not text either
    texts = [s for s in (ln.strip().lstrip("\ufeff").strip() for ln in text.splitlines()) if s]
    if not texts:
        raise InputError(f"text file {name} holds no non-empty line; give it one text per line")
    return texts


def read_texts(
    source: str | Path | Iterable[str] | None = None,
    n_lines: int = DEFAULT_N_LINES,
    *,
    max_bytes: int = DEFAULT_MAX_TEXT_BYTES,
) -> list[str]:
    """Texts to analyse.

    ``None``: the default corpus. A :class:`~pathlib.Path`: a UTF-8 text file, one text per
    non-empty line, read by :func:`read_text_file` (at most ``max_bytes``; ``Path("-")`` is
    standard input). A ``str``: that single text. Any other iterable: its strings.
    """
    if source is None:
        return default_corpus(n_lines)
    if isinstance(source, Path):
        return read_text_file(source, max_bytes)
    if isinstance(source, str):
        return [source]
    return list(source)


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Raise :class:`InputError` for an empty list, non-strings or empty strings."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise InputError("no text given: pass at least one non-empty string (or use the default corpus)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} is a {type(t).__name__}, not a string")
        if not t.strip():
            raise InputError(f"text {i} is empty; remove it or give it some words")
    return texts
