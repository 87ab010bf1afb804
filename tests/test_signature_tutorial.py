"""The executed tutorial page ``docs/signatures.md`` ("Signatures and lineage")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_page, tutorial_module

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.real_model
def test_signature_tutorial_runs(smollm2, gemma3, tmp_path, monkeypatch):
    """Run the page's Python blocks in order (the shared real models stand in for ``load_model``)."""
    ns = run_page(PAGE, tmp_path, monkeypatch, {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3})
    from sd_lens.signature import signature_angle

    a, b, ft, rot = ns["sig_a"], ns["sig_b"], ns["sig_ft"], ns["sig_rot"]
    # what the page says, checked on what it computed (measured: see the page's outputs)
    assert not set(ns["A"]) & set(ns["B"])
    assert a.block == b.block == ft.block == rot.block
    assert signature_angle(a, b) < 1.0
    assert signature_angle(a, b, "weights") == 0.0
    assert (tmp_path / "smollm2.signature.json").is_file()
    assert (ns["again"].empirical == a.empirical).all() and (ns["again"].weights == a.weights).all()
    # measured: |dW|/|W| 0.307 %; perplexity on the 16 held-out docstring paragraphs 66.6 -> 63.2
    assert ns["change"] > 0 and ns["ppl_after"] < 0.98 * ns["ppl_before"]
    m = ns["matrix"]
    # measured (16 + 16 lines): stability 0.38 / 0 deg; relative 0.95 / 0.15 deg; control (seed 0) 83.5 / 83.4 deg
    for kind in ("empirical", "weights"):
        assert m.angle("SmolLM2 (A)", "fine-tuned", kind) < 5.0, kind
        assert m.angle("SmolLM2 (A)", "rotated", kind) > 80.0, kind
        assert m.angle("fine-tuned", "rotated", kind) > 80.0, kind
    assert 85.0 < float(ns["spread"].mean()) < 90.0  # 20 other draws of Q
    assert "d_model 576" in ns["width_error"] and "d_model 640" in ns["width_error"]
    assert (tmp_path / "docs" / "img" / "signature_heatmap.png").read_bytes()[:4] == b"\x89PNG"
