"""Analysis 3: linear fits of the FFN (closed form, Monte Carlo, real inputs) and input collection."""
from __future__ import annotations

import pytest
import torch

from sd_lens import model_view
from sd_lens.analyses.ffn_fit import FFNFit, fit_ffn
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
from sd_lens.linalg import acute_angle_deg

# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (real_model: the `smollm2` fixture of conftest loads it once per session)
# --------------------------------------------------------------------------------------------
EXPLOSION_BLOCK = 11  # of the second defect of SmolLM2 (../shared/SPEC.md); a test fact, not a library one


def _pydoc_lines(n: int) -> list[str]:
    from pydoc_data.topics import topics

    lines: list[str] = []
    for key in sorted(topics):
        lines += [ln.strip() for ln in topics[key].splitlines() if ln.strip()]
    return lines[:n]


@pytest.fixture(scope="module")
def smollm2_fits(smollm2) -> dict[str, FFNFit]:
    """The three fits of block 11, computed once for the module (512 pydoc lines: 5 649 real
    inputs, ≈ 10 s to collect on an idle 2-core machine)."""
    mv = model_view(smollm2)
    X = collect_ffn_inputs(smollm2, _pydoc_lines(512), EXPLOSION_BLOCK, max_tokens=None)
    return {
        "gaussian": fit_ffn(mv, EXPLOSION_BLOCK, "gaussian"),
        "monte_carlo": fit_ffn(mv, EXPLOSION_BLOCK, "monte_carlo", n_samples=100_000),
        "real": fit_ffn(mv, EXPLOSION_BLOCK, "real", inputs=X),
    }


def test_smollm2_three_fits_agree_on_u0(smollm2_fits):
    """Measured at block 11: Gaussian closed form vs 100 000-sample Monte Carlo 0.36°, real fit vs
    either 3.4° (stable from 128 to 768 corpus lines). The paper's own reference-style fit is
    compared in benchmarks/bench_ffn_fit.py."""
    f = smollm2_fits
    ang = {
        (a, b): float(acute_angle_deg(f[a].u0, f[b].u0))
        for a, b in (("gaussian", "monte_carlo"), ("gaussian", "real"), ("monte_carlo", "real"))
    }
    print({f"{a} vs {b}": round(v, 2) for (a, b), v in ang.items()})
    print({k: (round(v.r2, 4), round(v.r2_hidden, 4), v.n_samples, v.n_eval, round(v.seconds, 2)) for k, v in f.items()})
    assert ang[("gaussian", "monte_carlo")] < 1.5
    assert ang[("gaussian", "real")] < 6.0 and ang[("monte_carlo", "real")] < 6.0


def test_smollm2_r2_in_measured_range(smollm2_fits):
    """Measured R² of the FFN output (own intercept, held out): Gaussian fits 0.26 (closed form)
    and 0.25 (Monte Carlo) on fresh N(0, I) inputs — the FFN is far from linear over N(0, I) —
    and the real fit 0.69 on held-out real inputs (0.1–0.8 depending on the corpus size: a few
    exploding tokens dominate it, see the module docstring of sd_lens.analyses.ffn_fit)."""
    f = smollm2_fits
    assert 0.15 < f["gaussian"].r2 < 0.4
    assert abs(f["gaussian"].r2 - f["monte_carlo"].r2) < 0.03
    assert 0.4 < f["real"].r2 < 0.95
    assert f["real"].n_samples > 5 * f["real"].M.shape[1]  # well determined


def test_smollm2_u0_points_along_the_initial_tokens_state(smollm2, smollm2_fits):
    """At the explosion block u₀(F) is the direction the initial token's state takes (SPEC: 4.7°
    to the defect direction). Measured against that state after block 11: Gaussian 3.2°, Monte
    Carlo 3.2°, real 0.7°."""
    store = {}
    with torch.no_grad():
        smollm2.run_with_hooks(smollm2.to_tokens("The cat"), stop_at_layer=EXPLOSION_BLOCK + 1, fwd_hooks=[(
            f"blocks.{EXPLOSION_BLOCK}.hook_resid_post", lambda t, hook: store.update(x0=t[0, 0].detach().clone()))])
    angles = {k: float(acute_angle_deg(v.u0, store["x0"])) for k, v in smollm2_fits.items()}
    print({k: round(v, 2) for k, v in angles.items()})
    assert max(angles.values()) < 6.0
