"""The iterative spectra (issue 21) against the exact float64 route on the bundled real models.

Tolerances (the issue's): u0/v0 of L and F within 0.05 deg, s0 and decay eigenvalues within 1e-4
relative; closest blocks, explosion and decay blocks exactly the same.
"""

from __future__ import annotations

import pytest

from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.spectra import decay_check, layer_spectra
from sd_lens.corpus import default_corpus
from sd_lens.linalg import acute_angle_deg

ANGLE_DEG = 0.05
REL = 1e-4


def _check(model, n_texts: int) -> None:
    probe = probe_norms(model, default_corpus(n_texts))
    report = find_defects(model, probe)
    assert len(report) >= 1
    dirs = [d.direction for d in report]
    decay = sorted({b for d in report for b in d.decay_layers})
    fast = layer_spectra(model, dirs, keep=decay, n_eval=0)
    exact = layer_spectra(model, dirs, keep=decay, n_eval=0, exact=True)
    assert not fast.fallbacks(), fast.fallbacks()
    for f, e in zip(fast.blocks, exact.blocks, strict=True):
        for k in ("u0", "v0", "ffn_u0", "ffn_v0"):
            assert float(acute_angle_deg(getattr(f, k), getattr(e, k))) < ANGLE_DEG, (f.layer, k)
        assert f.s0 == pytest.approx(e.s0, rel=REL) and f.ffn_s0 == pytest.approx(e.ffn_s0, rel=REL)
        assert f.angles_deg == pytest.approx(e.angles_deg, abs=ANGLE_DEG)
    for k, d in enumerate(report):
        assert fast.closest_block(k) == exact.closest_block(k)
        for b in d.decay_layers:
            cf = decay_check(model, b, d.direction, lin=fast.linearizations[b])
            ce = decay_check(model, b, d.direction, lin=exact.linearizations[b], exact=True)
            assert cf.eigenvalue == pytest.approx(ce.eigenvalue, rel=REL)
            assert abs(cf.eigenvalue_imag) == pytest.approx(abs(ce.eigenvalue_imag), rel=REL, abs=1e-9)
            assert cf.eigvec_angle_deg == pytest.approx(ce.eigvec_angle_deg, abs=ANGLE_DEG)


def test_fast_spectra_agree_with_exact_on_smollm2(smollm2):
    _check(smollm2, 48)


def test_fast_spectra_agree_with_exact_on_gemma3(gemma3):
    _check(gemma3, 24)
