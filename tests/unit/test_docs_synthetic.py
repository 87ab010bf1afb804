"""docs/models.md, "Synthetic models with a planted defect" and "Dry run": the page's Python blocks in those
sections run, and print exactly the ```text block that follows each."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tutorial_module

pytestmark = pytest.mark.bridge_only(reason="the page builds synthetic models, which need TransformerLens 4's bridge")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "models.md"
SECTIONS = ("## Synthetic models with a planted defect", "## Dry run: memory arithmetic before loading")


def _section_blocks() -> list[tuple[str, str]]:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(SECTIONS[0])
    part = text[start:]
    blocks = tutorial_module().blocks(part)
    pairs = []
    for i, b in enumerate(blocks):
        if b.lang == "python":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            assert nxt is not None and nxt.lang == "text" and part[b.end:nxt.start].strip() == "", "no output block"
            pairs.append((b.body, nxt.body))
    return pairs


def test_the_synthetic_model_sections_print_what_the_page_shows(capsys):
    pairs = _section_blocks()
    assert len(pairs) == 2
    namespace: dict = {"__name__": "__docs__"}
    for code, expected in pairs:
        exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102
        printed = capsys.readouterr().out
        assert printed.rstrip("\n") == expected.rstrip("\n")
