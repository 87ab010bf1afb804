"""Run the tutorial page, docs/tutorial.md: its ```python blocks, in order, in one namespace.

The page is the source; this script only executes it, so the tutorial cannot drift from the code
(``tests/integration/test_report_real.py::test_tutorial_runs`` does the same in the test suite).

    .venv/bin/python examples/tutorial.py            # run the page, printing what each block prints
    .venv/bin/python examples/tutorial.py --write    # ... and refresh the ```text output blocks in it

A ```text block right after a ```python block is that block's output: ``--write`` replaces it
with what the block printed this time (inserting or removing it as needed). Run it from a scratch
directory if you do not want ``sd_lens_report/`` written into the current one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

PAGE = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*\n?", re.DOTALL | re.MULTILINE)


class Block(NamedTuple):
    """One fenced code block of the page: its language, body and span in the page text."""

    lang: str
    body: str
    start: int
    end: int


def blocks(markdown: str) -> list[Block]:
    """All fenced code blocks of ``markdown``, in order."""
    return [Block(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(markdown)]


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the ```python blocks, in order."""
    return [b.body for b in blocks(markdown) if b.lang == "python"]


def cli_lines(markdown: str) -> list[str]:
    """Every ``sd-lens ...`` command line of the page's shell blocks (``$ `` prompts dropped)."""
    out = []
    for b in blocks(markdown):
        if b.lang in ("bash", "sh", "shell", "console"):
            for line in b.body.splitlines():
                line = line.strip().removeprefix("$ ").split("  #")[0].strip()
                if line.startswith("sd-lens "):
                    out.append(line)
    return out


class _Tee(io.TextIOBase):
    def __init__(self, echo: bool) -> None:
        self.buf = io.StringIO()
        self.echo = echo

    def write(self, s: str) -> int:
        self.buf.write(s)
        if self.echo:
            sys.__stdout__.write(s)
        return len(s)


def run_tutorial(
    page: str | Path = PAGE, *, echo: bool = True, outputs: list[str] | None = None
) -> dict[str, Any]:
    """Execute the page's ```python blocks in order in one namespace; return the namespace.

    Args:
        page: the Markdown file.
        echo: also print what each block prints.
        outputs: if given, receives each block's printed output.

    Raises:
        RuntimeError: a block failed (names the block and chains the original exception).
    """
    path = Path(page)
    namespace: dict[str, Any] = {"__name__": "__tutorial__"}
    for i, code in enumerate(python_blocks(path.read_text(encoding="utf-8")), start=1):
        tee = _Tee(echo)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(tee):
                exec(compile(code, f"{path.name}, python block {i}", "exec"), namespace)  # noqa: S102
        except Exception as exc:
            raise RuntimeError(f"{path.name}: python block {i} failed: {type(exc).__name__}: {exc}") from exc
        if echo:
            print(f"[block {i}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
        if outputs is not None:
            outputs.append(tee.buf.getvalue())
    return namespace


def write_outputs(markdown: str, outputs: list[str]) -> str:
    """``markdown`` with the ```text block after each ```python block set to that block's output."""
    parts, pos, k = [], 0, 0
    found = blocks(markdown)
    for j, b in enumerate(found):
        if b.lang != "python":
            continue
        out = outputs[k].rstrip("\n")
        k += 1
        nxt = found[j + 1] if j + 1 < len(found) else None
        follows = nxt is not None and nxt.lang == "text" and not markdown[b.end : nxt.start].strip()
        parts.append(markdown[pos : b.end])
        pos = b.end
        if follows:
            pos = nxt.end  # drop the old output block (and re-add it below when there is output)
        if out:
            parts.append(f"```text\n{out}\n```\n")
    parts.append(markdown[pos:])
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument("--write", action="store_true", help="refresh the page's ```text output blocks")
    args = parser.parse_args(argv)
    outputs: list[str] = []
    t0 = time.perf_counter()
    run_tutorial(args.page, outputs=outputs)
    print(f"tutorial ran in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.write:
        text = args.page.read_text(encoding="utf-8")
        args.page.write_text(write_outputs(text, outputs), encoding="utf-8")
        print(f"outputs written into {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
