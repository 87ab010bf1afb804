"""Text to analyse: a fixed default corpus from CPython's own docs, or yours.

The default corpus is English prose that ships with every CPython (``pydoc_data.topics``, the
reference manual's topics), so it is always present and identical on every machine with the same
Python minor version: lines longer than 40 characters, grammar lines (containing ``::=``) and
code-like lines (no space, or starting with ``>>>``) dropped, topics in sorted order, then every
``stride``-th line (then the lines after those) until ``n_lines`` are taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from sd_lens.errors import InputError

DEFAULT_N_LINES = 48


def _prose_lines() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for line in topics[key].splitlines():
            s = line.strip()
            if len(s) > 40 and "::=" not in s and " " in s and not s.startswith((">>>", "...")):
                out.append(s)
    return out


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


def read_texts(source: str | Path | Iterable[str] | None = None, n_lines: int = DEFAULT_N_LINES) -> list[str]:
    """Texts to analyse.

    ``None``: the default corpus. A :class:`~pathlib.Path`: a UTF-8 text file, one text per
    non-empty line. A ``str``: that single text. Any other iterable: its strings.
    """
    if source is None:
        return default_corpus(n_lines)
    if isinstance(source, Path):
        try:
            raw = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read text file {source}: {exc}") from exc
        texts = [ln.strip() for ln in raw.splitlines() if ln.strip()]
        if not texts:
            raise InputError(f"text file {source} holds no non-empty line; give it one text per line")
        return texts
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
