"""The executed tutorial page ``docs/channel_tutorial.md`` ("From defect to channel, weight and head")."""
from __future__ import annotations

from pathlib import Path

from conftest import tutorial_module

ROOT = Path(__file__).resolve().parents[2]


PAGE = ROOT / "docs" / "channel_tutorial.md"


def test_channel_tutorial_names_no_block_channel_or_neuron_of_a_model():
    """Its code reads every block, channel and neuron from the results: no number in a python block but sizes."""
    tutorial = tutorial_module()
    blocks = [b.body for b in tutorial.blocks(PAGE.read_text(encoding="utf-8")) if b.lang == "python"]
    assert blocks
    code = "\n".join(blocks)
    for forbidden in ("400", "163", "1414", "[3", "(3", "[5", "layer=", "block=3"):
        assert forbidden not in code, forbidden
