"""The iterative spectra (issue 21) against the exact float64 route, on the tiny models of every family.

Tolerances (the issue's): angles of u0 (of L and of F) within 0.05 deg, s0 and decay eigenvalues within
1e-4 relative; blocks (closest block, explosion/decay blocks) exactly the same.
"""

from __future__ import annotations

import pytest
import torch

from conftest import planted_bos_model
from sd_lens.analyses.spectra import BlockLinearization, decay_check, layer_spectra
from sd_lens.linalg import MatrixOp, acute_angle_deg, exact_top_singular, leading_triplet, nearest_eigenpair, unit
from sd_lens.pipeline import run_analysis

ANGLE_DEG = 0.05
REL = 1e-4


def _agree(fast, exact) -> None:
    assert not exact.fallbacks() and all(b.solver == "exact" for b in exact.blocks)
    for f, e in zip(fast.blocks, exact.blocks, strict=True):
        assert f.layer == e.layer
        assert f.s0 == pytest.approx(e.s0, rel=REL) and f.ffn_s0 == pytest.approx(e.ffn_s0, rel=REL)
        assert float(acute_angle_deg(f.u0, e.u0)) < ANGLE_DEG and float(acute_angle_deg(f.ffn_u0, e.ffn_u0)) < ANGLE_DEG
        assert float(acute_angle_deg(f.v0, e.v0)) < ANGLE_DEG and float(acute_angle_deg(f.ffn_v0, e.ffn_v0)) < ANGLE_DEG
        assert f.angles_deg == pytest.approx(e.angles_deg, abs=ANGLE_DEG)
        assert f.ffn_r2 == e.ffn_r2  # the fit is the same computation


def test_fast_spectra_agree_with_exact_on_tiny(tiny):
    d = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    layers = list(range(tiny.cfg.n_layers))
    fast = layer_spectra(tiny, [d], n_eval=64, keep=layers)
    exact = layer_spectra(tiny, [d], n_eval=64, keep=layers, exact=True)
    assert {b.solver.split(" ")[0] for b in fast.blocks} <= {"iterative", "exact"}
    assert any(b.solver == "iterative" for b in fast.blocks)
    _agree(fast, exact)
    assert fast.closest_block(0) == exact.closest_block(0)
    # the kept block's L is the same dense matrix either way
    torch.testing.assert_close(fast.linearizations[0].L, exact.linearizations[0].L, rtol=0, atol=0)
    # the decay eigen-check, against the block's own u0 and against a random direction
    for layer, lin in fast.linearizations.items():
        for u in (fast.blocks[layer].u0, d):
            f, e = decay_check(None, layer, u, lin=lin), decay_check(None, layer, u, lin=lin, exact=True)
            assert e.solver == "exact" and f.solver.split(" ")[0] in ("iterative", "exact")
            assert f.eigenvalue == pytest.approx(e.eigenvalue, rel=REL, abs=1e-9)
            assert abs(f.eigenvalue_imag) == pytest.approx(abs(e.eigenvalue_imag), rel=REL, abs=1e-9)
            assert f.eigvec_angle_deg == pytest.approx(e.eigvec_angle_deg, abs=ANGLE_DEG)


def test_run_analysis_fast_and_exact_find_the_same_blocks():
    model = planted_bos_model()
    texts = ["The cat sat on the mat.", "A dog ran in the park today.", "Numbers: 1 2 3 4 5 6."]
    fast = run_analysis(model, texts, dtype_check=False)
    exact = run_analysis(model, texts, dtype_check=False, exact_spectra=True)
    assert exact.spectra.exact and not fast.spectra.exact
    assert [(d.explosion_layer, list(d.decay_layers)) for d in fast.defects] == [
        (d.explosion_layer, list(d.decay_layers)) for d in exact.defects
    ]
    _agree(fast.spectra, exact.spectra)
    for ff, fe in zip(fast.findings, exact.findings, strict=True):
        assert ff.closest_block == fe.closest_block
        assert ff.predicted_angle_deg == pytest.approx(fe.predicted_angle_deg, abs=ANGLE_DEG)
        for cf, ce in zip(ff.decay_checks, fe.decay_checks, strict=True):
            assert ce.solver == "exact"
            assert cf.eigenvalue == pytest.approx(ce.eigenvalue, rel=REL, abs=1e-9)
            assert cf.eigenvalue_imag == pytest.approx(ce.eigenvalue_imag, rel=REL, abs=1e-9)
            assert cf.eigvec_angle_deg == pytest.approx(ce.eigvec_angle_deg, abs=ANGLE_DEG)


def _with_spectrum(singular_values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = singular_values.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    P, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q * singular_values.double()) @ P.T


def test_leading_triplet_iterative_matches_exact():
    m = _with_spectrum(torch.linspace(10.0, 0.1, 96)).float()
    fast, exact = leading_triplet(m), exact_top_singular(m)
    assert fast.solver == "iterative" and exact.solver == "exact"
    assert fast.residual <= 2e-4 * fast.gap and 0 < fast.products < 2 * 96
    assert fast.s0 == pytest.approx(exact.s0, rel=REL)
    assert float(acute_angle_deg(fast.u0, exact.u0)) < ANGLE_DEG
    # the sign convention of svd_signed: the largest-magnitude entry of u0 is positive
    assert float(fast.u0[fast.u0.abs().argmax()]) > 0 and float(exact.u0[exact.u0.abs().argmax()]) > 0
    torch.testing.assert_close(fast.u0, exact.u0, atol=1e-4, rtol=0)
    # an operator that never forms the matrix gives the same answer
    op = MatrixOp((96, 96), lambda x: m @ x, lambda y: m.T @ y, lambda: m, torch.device("cpu"))
    assert leading_triplet(op).s0 == pytest.approx(fast.s0, rel=1e-6)
    assert leading_triplet(m, exact=True).solver == "exact"


def test_degenerate_leading_pair_falls_back_and_says_so():
    s = torch.linspace(1.0, 0.1, 48)
    s[1] = s[0]  # s0 == s1: u0 is not determined, the iteration cannot certify it
    m = _with_spectrum(s, seed=3).float()
    t = leading_triplet(m)
    assert t.solver.startswith("exact (fallback: leading pair not separated")
    assert t.s0 == pytest.approx(exact_top_singular(m).s0, rel=1e-9)


def test_fallback_is_reported_by_layer_spectra(monkeypatch):
    from sd_lens.analyses import spectra as mod
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama", n_layers=2)
    real = mod.leading_triplet
    monkeypatch.setattr(mod, "leading_triplet", lambda m, *a, **k: real(m, *a, **{**k, "min_gap": 2.0}))
    out = layer_spectra(model, n_eval=0)
    assert {(layer, which) for layer, which, _ in out.fallbacks()} == {(0, "L"), (0, "F"), (1, "L"), (1, "F")}
    assert all("leading pair not separated" in why or "not converged" in why for *_, why in out.fallbacks())


def test_nearest_eigenpair_iterative_is_certified():
    d = 24
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eigs = torch.linspace(0.2, 0.9, d, dtype=torch.float64)
    eigs[0] = -0.97
    R = (Q * eigs) @ Q.T
    u = unit(Q[:, 0] + 0.05 * torch.randn(d, generator=g, dtype=torch.float64))
    fast, exact = nearest_eigenpair(R, u), nearest_eigenpair(R, u, exact=True)
    assert fast.solver == "iterative" and exact.solver == "exact"
    assert fast.value.real == pytest.approx(exact.value.real, rel=1e-9) and fast.value.imag == 0
    assert fast.angle_deg == pytest.approx(exact.angle_deg, abs=1e-6)
    fake = BlockLinearization(layer=3, A=R.float(), F=torch.zeros(d, d), L=torch.eye(d) + R.float(), parallel=True,
                              ffn_fit=None)  # type: ignore[arg-type]
    assert decay_check(None, 3, u.float(), lin=fake).solver == "iterative"
    assert decay_check(None, 3, u.float(), lin=fake, exact=True).solver == "exact"


def test_nearest_eigenpair_falls_back_for_a_complex_pair():
    # a rotation-scaling pair: RQI in real arithmetic cannot converge to it; the exact route answers
    R = torch.diag(torch.tensor([0.0, 0.0, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64))
    R[0, 0] = R[1, 1] = -0.5
    R[0, 1], R[1, 0] = -0.8, 0.8
    u = torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    pair = nearest_eigenpair(R, u)
    assert pair.solver.startswith("exact (fallback: ")
    assert pair.value.real == pytest.approx(-0.5) and abs(pair.value.imag) == pytest.approx(0.8)
