"""Super weights of the bundled models, read from the executed page ``docs/super_weights.md`` (one computation:
the page's calls are served by ``shared_call``, see ``SHARED_IN_PAGES``).

Measured on the first 8 default-corpus texts, perplexity on the 8 after them, float32 CPU. Integers (blocks,
rows, columns) exact; floats within the stated tolerances (a forward's last digits vary with threads and batch
shape; perplexity ratios of a zeroed weight amplify them, hence 2 %)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_page

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "super_weights.md"


def _where(w):
    return (w.block, w.row, w.col)


@pytest.fixture(scope="module")
def page(smollm2, gemma3, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        return run_page(PAGE, tmp_path_factory.mktemp("super_weights"), mp,
                        {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3})
    finally:
        mp.undo()


def test_smollm2_super_weights(page):
    sw = page["sw"]
    assert [d.label for d in sw] == ["D0", "D1"]
    d0, d1 = sw
    w = d1.super_weight
    assert _where(w) == (11, 507, 1229)
    assert w.value == pytest.approx(5.8757, rel=1e-4) and w.norm_scale is None and w.gain == 1.0
    assert w.spike == pytest.approx(3064.8, rel=1e-3)
    assert w.share == pytest.approx(0.7233, abs=2e-3)
    s = w.score
    assert s.ppl_ratio == pytest.approx(21.37, rel=0.02) and s.kl == pytest.approx(3.65, rel=0.02) and not s.inert
    assert s.control_ppl_ratio < 1.01 and s.control_kl < 0.01  # measured 1.004, 0.0018
    assert w.verification.restore_ppl_ratio == pytest.approx(1.0, abs=0.01)  # measured 1.000
    assert [_where(c) for c in d1.cancellers] == [(28, 507, 678), (29, 507, 1165)]
    assert d1.cancellers[0].share == pytest.approx(0.958, abs=2e-3)
    rounds = d1.emergence
    assert _where(rounds[0].emitter) == (11, 507, 1487) and rounds[0].peak_ratio == pytest.approx(0.288, abs=0.005)
    assert rounds[1].emitter is None and rounds[1].peak_ratio < 0.05  # measured 0.020
    assert d1.consistency.rows_agree and d1.consistency.blocks_agree and d1.consistency.mismatches == []
    w0 = d0.super_weight
    assert _where(w0) == (2, 507, 90) and w0.share == pytest.approx(0.5435, abs=2e-3)
    assert w0.score.ppl_ratio == pytest.approx(1.607, rel=0.02) and w0.score.kl == pytest.approx(0.597, rel=0.02)
    assert w0.verification.restore_ppl_ratio == pytest.approx(1.0, abs=0.01)
    assert d0.consistency.rows_agree and not d0.consistency.blocks_agree
    assert any("build-up over blocks 1-2" in m for m in d0.consistency.mismatches)


def test_gemma3_super_weight_is_made_massive_by_the_norm(page):
    g = page["g_sw"]
    assert len(g) == 1
    d = g[0]
    w = d.super_weight
    assert _where(w) == (5, 163, 584)
    assert w.value == pytest.approx(0.2176, rel=1e-3) and abs(w.value) < 1  # an ordinary weight ...
    assert w.norm_scale == pytest.approx(741.0, rel=1e-3)
    assert w.gain == pytest.approx(2.01e5, rel=0.01)  # ... that the post-FFN norm multiplies by ~2e5
    assert w.effective == pytest.approx(14386, rel=0.01) and w.share == pytest.approx(0.835, abs=0.005)
    assert sorted(e.block for e in d.emitters) == [3, 4, 5, 6, 7, 8]
    assert w.score.inert and w.score.kl == pytest.approx(0.0208, rel=0.05)  # others keep writing the channel
    assert w.verification.restore_ppl_ratio == pytest.approx(1.0, abs=0.01)
    assert [_where(c) for c in d.cancellers][:1] == [(16, 163, 287)]
    assert d.consistency.rows_agree and not d.consistency.blocks_agree
    assert any("build-up over blocks 3-8" in m for m in d.consistency.mismatches)
