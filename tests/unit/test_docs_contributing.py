"""docs/contributing.md shows real code: every code block titled with a path is copied from that file.

A block titled ``title="path"`` must occur verbatim in ``path`` (relative to the repository root),
so an excerpt cannot drift from the code it quotes; the worked example is shown whole and must
equal ``examples/03_custom_analysis.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "contributing.md"
EXAMPLE = "examples/03_custom_analysis.py"
FENCE = re.compile(r'^(?P<indent>[ ]*)```\w+ title="(?P<path>[^"]+)"[ ]*$')


def titled_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(path, code, line number)`` of every fenced code block with a ``title``, fence indent removed."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start, body = m["indent"], i + 1, []
        i += 1
        while lines[i].rstrip() != indent + "```":
            line = lines[i]
            assert not line.strip() or line.startswith(indent), f"contributing.md:{i + 1}: code outside its fence's indent"
            body.append(line[len(indent):])
            i += 1
        out.append((m["path"], "\n".join(body) + "\n", start))
        i += 1
    return out


BLOCKS = titled_blocks(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_titled_blocks():
    paths = {path for path, _, _ in BLOCKS}
    assert EXAMPLE in paths and "tests/unit/test_runtime_seam.py" in paths and "src/sd_lens/pipeline.py" in paths


@pytest.mark.parametrize("path, code, line", BLOCKS, ids=[f"{p}:{n}" for p, _, n in BLOCKS])
def test_each_titled_block_is_copied_from_its_file(path, code, line):
    source = ROOT / path
    assert source.is_file(), f"contributing.md:{line} quotes {path}, which does not exist"
    assert code in source.read_text(encoding="utf-8"), (
        f"contributing.md:{line}: the block titled {path} is no longer in that file; copy it again"
    )


def test_the_worked_example_is_shown_whole():
    shown = [code for path, code, _ in BLOCKS if path == EXAMPLE]
    assert shown == [(ROOT / EXAMPLE).read_text(encoding="utf-8")]
