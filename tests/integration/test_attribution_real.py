"""Component attribution of defects (attention / FFN per block) and the lever chosen from it."""
from __future__ import annotations

import pytest

from conftest import attributed
from sd_lens.analyses.causal.lever import find_lever


# ------------------------------------------------------------------------------------------------
# real models (the first texts of the default corpus: 8 for SmolLM2, 12 for Gemma-3, to stay under 40 s)
# ------------------------------------------------------------------------------------------------
def test_smollm2_one_block_explosions_and_a_specific_ffn_lever(smollm2):
    probe, report, att = attributed(smollm2, 8)
    assert att.split == "hooks" and att.closure_error < 1e-5  # measured: 4.2e-7
    assert [(a.initial_token, a.explosion_set, a.peak_layer) for a in att] == [(True, [1, 2], 2), (True, [11], 11)]
    d1 = att[1]
    assert d1.dominant(11) == "ffn" and float(d1.ffn[11]) == pytest.approx(25035, rel=0.01)  # measured: 25 035
    assert d1.reached > 0.99  # measured: 0.999
    levers = find_lever(smollm2, report, att)
    lev = {x.label: x for x in levers}
    one = lev["D1"]
    assert one.sites == [(11, "ffn")] and one.peak_layer == 11
    assert one.peak_clean == pytest.approx(25102, rel=1e-3)  # measured: 25 102
    assert one.reduction == pytest.approx(0.924, abs=0.01)  # measured: 0.9237
    # measured control (5 seeds): the matched random vector raises the peak to 34 241 .. 35 629
    assert one.control_reductions.max() < -0.3 and one.specific
    # D0: no candidate reaches half of its window's peak; the best is chosen
    zero = lev["D0"]
    assert zero.window == (1, 10) and not zero.achieved and zero.specific
    assert [c.reduction for c in zero.candidates] == pytest.approx([0.443, 0.470, 0.465], abs=0.01)  # measured
    assert zero.name == "both sublayers at the explosion set"
    assert zero.control_reductions.max() < -1.0  # measured: peaks 1 913 .. 1 985 against 810 clean


def test_gemma3_multi_block_build_up_and_its_lever(gemma3):
    probe, report, att = attributed(gemma3, 12)
    assert att.split == "hooks" and att.closure_error < 1e-5  # measured: 1.5e-7
    assert len(att) == 1
    a = att[0]
    assert a.initial_token and a.peak_layer == 14
    assert a.explosion_set == [3, 4, 5, 6, 7, 8, 11]  # measured, reaches 0.863 of the peak component
    assert all(a.dominant(layer) == "ffn" for layer in a.explosion_set)
    assert all(10_000 < float(a.ffn[layer]) < 15_000 for layer in range(3, 9))  # measured: 10 369 .. 13 691
    levers = find_lever(gemma3, report, att)
    lev = levers[0]
    assert lev.peak_clean == pytest.approx(103827, rel=1e-3) and lev.peak_layer == 14  # measured: 103 827
    # the lever acts on the FFN outputs before the post-FFN norm (its gains reach 585-741 on the defect channel)
    assert lev.hooks == [f"blocks.{layer}.mlp.hook_out" for layer in a.explosion_set]
    assert lev.name == "dominant sublayer at the explosion set" and lev.achieved
    assert lev.reduction == pytest.approx(0.750, abs=0.01)  # measured: 0.7496 (peak 25 994)
    # measured control (5 seeds): -38.2 % .. -60.2 %, mean -47.5 %: the lever removes more under every seed
    cr = lev.control_reductions
    assert float(cr.mean()) == pytest.approx(0.475, abs=0.03) and float(cr.max()) < 0.65 and lev.specific
    # measured: 0.65 .. 14.8 removed from pre-norm outputs of norm 0.09 .. 2 (clean): up to 150x, yet bounded by the norm
    assert lev.removed[0] == pytest.approx(0.651, abs=0.02) and max(lev.relative_size) > 50
