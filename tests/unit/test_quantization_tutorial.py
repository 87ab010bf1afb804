"""The executed tutorial page ``docs/quantization.md`` ("Quantization that protects the defect blocks")."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import tutorial_module

ROOT = Path(__file__).resolve().parents[2]


PAGE = ROOT / "docs" / "quantization.md"


def _code() -> str:
    tutorial = tutorial_module()
    blocks = [b.body for b in tutorial.blocks(PAGE.read_text(encoding="utf-8")) if b.lang == "python"]
    assert len(blocks) >= 5
    return "\n".join(blocks)


def test_quantization_tutorial_names_no_block_of_a_model():
    """Its code reads every block from the results: the only integers are seeds and line counts, none names a block."""
    code = _code()
    tree = ast.parse(code)
    seeds = [kw.value for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords
             if kw.arg in ("seeds", "n_lines")]
    allowed = {id(c) for s in seeds for c in ast.walk(s)}
    numbers = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
               and id(node) not in allowed]
    assert not numbers, numbers
    for forbidden in ("keep=[", "keep=(", "at(2", "at(5", "at(16"):
        assert forbidden not in code, forbidden
    assert "keep=result.protected" in code and "g_result.protected" in code


def test_quantization_tutorial_shows_the_committed_figure():
    text = PAGE.read_text(encoding="utf-8")
    assert "](img/quantization_smollm2.png)" in text
    png = ROOT / "docs" / "img" / "quantization_smollm2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'Path("docs/img/quantization_smollm2.png")' in _code()
