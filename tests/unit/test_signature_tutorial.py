"""The executed tutorial page ``docs/signatures.md`` ("Signatures and lineage")."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import tutorial_module

ROOT = Path(__file__).resolve().parents[2]


PAGE = ROOT / "docs" / "signatures.md"


def test_signature_page_names_no_block_or_channel_of_a_model():
    """Its code reads every block and channel from the results: no model's block, channel or layer number in it."""
    tutorial = tutorial_module()
    blocks = [b.body for b in tutorial.blocks(PAGE.read_text(encoding="utf-8")) if b.lang == "python"]
    assert len(blocks) >= 6
    code = "\n".join(blocks)
    for forbidden in ("block=", "layer=", "layers.", "blocks.", "explosion_layer ="):
        assert forbidden not in code, forbidden
    # no channel (SmolLM2's 507, Gemma-3's 163) nor explosion block (SmolLM2's 11, Gemma-3's 5) as a number
    # (400 is a paragraph-length limit of the fine-tuning text here, not Gemma-3's channel)
    assert not re.findall(r"(?<![\w.])(507|163|11|5)(?![\w.])", code)


def test_signature_page_shows_the_committed_heat_map():
    text = PAGE.read_text(encoding="utf-8")
    assert "](img/signature_heatmap.png)" in text
    png = ROOT / "docs" / "img" / "signature_heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
