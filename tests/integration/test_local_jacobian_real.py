"""The FFN's local Jacobian at a defect token, and causal checks with matched random controls."""
from __future__ import annotations

import json

import pytest

from conftest import attributed
from sd_lens.analyses.local_jacobian import (
    local_causal_checks,
)

# ------------------------------------------------------------------------------------------------
# real models (the first texts of the default corpus, as in test_attribution: 8 for SmolLM2, 12 for Gemma-3)
# ------------------------------------------------------------------------------------------------
_cache: dict[str, object] = {}


def _checked(model, key, n_texts):
    if key not in _cache:
        probe, report, att = attributed(model, n_texts)
        _cache[key] = (att, local_causal_checks(model, report, probe, att))
    return _cache[key]


def test_smollm2_the_gaussian_v0_is_the_local_trigger(smollm2):
    att, rep = _checked(smollm2, "smollm2", 8)
    d0, d1 = rep
    assert (d0.blocks, d1.blocks, d0.window, d1.window) == ([1, 2], [11], (1, 10), (11, 29))
    j = d1.jacobians[11]
    assert j.closure_error < 1e-5  # measured: 3.5e-7
    a = j.angles()
    # measured: v_local vs v0 7.3°, u_local vs u0 3.2°, u_local vs the defect direction 2.4°
    assert a["v_local_to_v0"] < 10 and a["u_local_to_u0"] < 5 and a["u_local_to_defect"] < 5
    assert float(j.sigma[0]) == pytest.approx(3490, rel=0.02)  # measured: 3 490 (the Gaussian s0: 84.9)
    assert j.input_cos_v == pytest.approx(0.598, abs=0.01)  # the input lies well along v_local: 14.3 of 24.0
    assert j.effective_input_norm == pytest.approx(j.input_norm, rel=1e-6)  # no masked channel
    v0 = d1.find("gaussian_v0", [11])
    # measured: v0 ablation at block 11 removes 94.2 % of the peak (25 102 -> 1 451); control (5 seeds) -1.5 .. 8.1 %
    assert v0.reduction == pytest.approx(0.942, abs=0.01) and v0.specific and float(v0.control_reductions.max()) < 0.15
    assert v0.relative_size[0] == pytest.approx(0.61, abs=0.02)  # a large edit: 14.6 of ‖n‖ = 24
    cancel = d1.find("local_cancel", [11])
    # measured: the minimum-norm cancelling edit (7.2, 0.30 of ‖n‖) removes 70.1 %; control max 4.0 %
    assert cancel.reduction == pytest.approx(0.701, abs=0.02) and cancel.specific
    assert cancel.better_model == "local"  # measured: local error 0.33, Gaussian 0.97
    # D0: v0 at block 2 alone removes 57.4 %, at blocks 1-2 together 70.4 %; specific
    assert d0.find("gaussian_v0", [2]).reduction == pytest.approx(0.574, abs=0.02)
    assert d0.find("gaussian_v0", [1, 2]).reduction == pytest.approx(0.704, abs=0.02)
    assert all(x.specific for x in d0.interventions if x.blocks == [1, 2])
    assert d0.jacobians[2].angles()["v_local_to_v0"] == pytest.approx(32.7, abs=1.5)  # measured: 32.7°
    # patching v0 into a non-carrier token at block 11 makes it a carrier (its norm at the peak block ~ the carrier's)
    p = next(p for p in d1.patches if p.kind == "gaussian_v0")
    assert p.ratio > 0.9 and p.gain > 20  # measured: 0.96 of the carrier's norm, from 542
    json.dumps(rep.to_dict())


def test_gemma3_a_small_local_edit_removes_half_the_peak_and_beats_its_control(gemma3):
    att, rep = _checked(gemma3, "gemma3", 12)
    (d0,) = rep
    assert d0.blocks == [3, 4, 5, 6, 7, 8, 11] and d0.window == (0, 17)
    j = d0.jacobians[3]
    assert j.closes and j.closure_error < 1e-5  # measured: 3.4e-7
    # the input is one-hot in a masked channel: what the FFN reads has norm 1.78 (a unit Gaussian's: 25.3)
    assert j.input_norm == pytest.approx(25.3, abs=0.1) and j.effective_input_norm == pytest.approx(1.78, abs=0.05)
    assert j.gaussian_effective_norm > 10 * j.effective_input_norm
    # the post-FFN norm makes the map steep: σ 18 960 with it, 21.4 without; the input has almost nothing along v_local
    assert float(j.sigma[0]) == pytest.approx(18960, rel=0.02) and j.sigma_ffn == pytest.approx(21.4, rel=0.02)
    assert abs(j.input_cos_v) < 1e-3  # measured: 1.8e-4
    a = j.angles()
    assert a["v_local_to_v0"] > 80 and a["u0_to_defect"] > 80 and a["u_local_to_defect"] < 25  # measured: 84.8°, 89.4°, 20.5°
    # every ablation of an input direction (v0, v_local, J^T u) removes < 0.1 % .. 16 % (the input has ~0 along them)
    for kind in ("gaussian_v0", "local_top", "local_steer"):
        assert max(x.reduction for x in d0.interventions if x.kind == kind) < 0.2  # measured: 0.8 %, 16.0 %, 15.5 %
    # the local linear model predicts the real change, the Gaussian fit does not (measured at block 3: 0.18 vs 24.8)
    single = [x for x in d0.interventions if not x.combined]
    assert sum(x.better_model == "local" for x in single) == len(single)
    # THE answer: half the cancelling edit at block 3 alone (0.28 = 16 % of the effective input) removes 54.6 %
    half = d0.find("local_cancel", [3], 0.5)
    assert half.effective_size[0] == pytest.approx(0.158, abs=0.01) and half.relative_size[0] < 0.02
    assert half.reduction == pytest.approx(0.546, abs=0.02) and half.achieved and half.specific
    cr = half.control_reductions  # measured (5 seeds): 2.5 .. 6.4 %, mean 4.2 %
    assert float(cr.max()) < 0.1 and float(cr.mean()) == pytest.approx(0.042, abs=0.01)
    full = d0.find("local_cancel", [3])
    # the full edit (0.56, 32 % of the effective input) removes 70.7 %, but its control already 13 .. 50 %
    assert full.reduction == pytest.approx(0.707, abs=0.02) and full.specific
    assert float(full.control_reductions.max()) == pytest.approx(0.50, abs=0.05)
    # patching cannot transfer this defect: its carrier's FFN input differs in a channel the norm masks
    assert all(0.15 < p.ratio < 0.25 and abs(p.gain - 1) < 0.02 for p in d0.patches)  # measured: 0.181 .. 0.184
    json.dumps(rep.to_dict())
