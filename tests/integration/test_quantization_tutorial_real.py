"""The executed tutorial page ``docs/quantization.md`` ("Quantization that protects the defect blocks")."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_page

ROOT = Path(__file__).resolve().parents[2]


PAGE = ROOT / "docs" / "quantization.md"


@pytest.mark.real_model
def test_quantization_tutorial_runs(smollm2, gemma3, tmp_path, monkeypatch):
    """Run the page's Python blocks in order (the shared real models stand in for ``load_model``)."""
    ns = run_page(PAGE, tmp_path, monkeypatch, {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3})
    assert (tmp_path / "docs" / "img" / "quantization_smollm2.png").read_bytes()[:4] == b"\x89PNG"
    # what the page says, checked on what it computed (measured on the default corpus, 48 held-out texts;
    # Gemma-3 on the first 16 of them)
    r = ns["result"]
    assert r.protected == (2, 8, 9, 11, 28, 29)  # measured: explosion + decay of D0 and D1
    assert r.recovered("W8A8 RTN") > 0.75  # measured: 83 % (float 221.34, RTN 530.12, kept 274.59)
    assert r.recovered("W8A8 RTN", "random") < 0.25  # measured: 13 % (3 seeds, 486.00 .. 492.01)
    assert r.random_summary("W8A8 RTN")["min"] > r.row("W8A8 RTN", "defects").perplexity * 1.5
    assert r.row("SmoothQuant W8A8").perplexity > r.row("W8A8 RTN").perplexity  # measured: 588.89 > 530.12
    assert r.recovered("SmoothQuant W8A8") > 0.8  # measured: 90 %
    assert r.row("W8A8 per-token").perplexity < 1.25 * r.row("float").perplexity  # measured: 258.81
    # the context by hand reproduces the experiment's row
    assert ns["p"].perplexity == pytest.approx(r.row("W8A8 RTN", "defects").perplexity, rel=1e-6)
    # the per-tensor grid collapses at the defect blocks' F2 inputs
    grid = ns["grid"]
    zeroed = [grid.at(b, "down")["zeroed"] for b in r.protected]
    assert sorted(zeroed)[1] > 0.85  # measured: 61 % at block 8, 90-100 % at the others
    # Gemma-3: keeping F2 does not help, SmoothQuant does
    g = ns["g_result"]
    base = g.row("float").perplexity
    assert g.row("W8A8 RTN").perplexity > 1e4 * base  # measured: x5.4e5
    assert g.row("W8A8 RTN", "defects").perplexity > 1e4 * base  # measured: no recovery
    assert g.row("SmoothQuant W8A8").perplexity < 1.5 * base  # measured: 251.68 vs 230.44
    g_grid = ns["g_grid"]
    worst_down = max(g_grid.at(b, "down")["zeroed"] for b in range(gemma3.cfg.n_layers))
    assert all(g_grid.at(b, "down")["zeroed"] < worst_down for b in g.protected)  # measured: 31 %, 62 % vs 92 %
    assert max(g_grid.at(b, "mlp_in")["zeroed"] for b in range(gemma3.cfg.n_layers)) > 0.9  # measured: 95 %
