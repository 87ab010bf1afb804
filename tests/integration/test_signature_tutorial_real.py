"""The executed tutorial page ``docs/signatures.md`` ("Signatures and lineage")."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_page

ROOT = Path(__file__).resolve().parents[2]


PAGE = ROOT / "docs" / "signatures.md"


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
    # the control is the same model in another basis: rotated back by Q, its signatures are the original's
    # (measured: 1.8e-5 deg empirical, 7.7e-6 deg weights; both computed on the same 16 lines)
    from sd_lens.linalg import acute_angle_deg

    for kind in ("empirical", "weights"):
        assert float(acute_angle_deg(ns["Q"].T @ a.vector(kind), rot.vector(kind))) < 0.01, kind
    assert ft.block == rot.block == a.block
    assert "d_model 576" in ns["width_error"] and "d_model 640" in ns["width_error"]
    assert (tmp_path / "docs" / "img" / "signature_heatmap.png").read_bytes()[:4] == b"\x89PNG"
