"""The executed page ``docs/outlier_tokens.md`` (outlier tokens, the prefix intervention, the residual identity)
on both bundled models: the numbers the page quotes, checked on what the page computed (one computation)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_page

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "outlier_tokens.md"


@pytest.mark.real_model
def test_outlier_tokens_page(smollm2, gemma3, tmp_path, monkeypatch):
    ns = run_page(PAGE, tmp_path, monkeypatch, {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3})
    # SmolLM2, 16 default texts, eta = 64 (measured): 18 outlier tokens, all defect carriers
    r = ns["result"]
    assert len(r) == 18 and len(r.initial) == 16 and r.carriers == 18
    assert {(o.token, o.block) for o in r.later} == {("Assert", 11), (" ", 2)}
    first = r.initial[0]
    assert first.blocks == (11, 28) and all(o.blocks == (11, 28) for o in r.initial)
    assert max(o.ratio for o in r.initial) == pytest.approx(2511.3, rel=1e-3)  # float32 maxima over 64 tokens
    assert [o.ratio for o in r.later] == pytest.approx([246.3, 66.9], rel=1e-3)
    assert r.n_by_block[11] == 17 and r.n_by_block[28] == 16 and r.n_by_block[2] == 1
    # every block where an outlier token passes is a defect's explosion or decay block (D0: 2 / 8, 9; D1: 11 / 28, 29)
    report = ns["report"]
    special = {b for d in report for b in [d.explosion_layer, *d.decay_layers]}
    assert {b for o in r.outliers for b in o.blocks} <= special
    assert [d.explosion_layer for d in report] == [2, 11] and report[1].decay_layers == [28, 29]
    # the prefixes: BOS is the baseline; the space (most frequent, smaller id) and PrefixQuant's take both out
    base, trials = r.baseline, {t.name: t for t in r.trials}
    assert base.later_outliers == 2 and base.perplexity.perplexity == pytest.approx(151.88, rel=1e-4)
    assert "BOS" in r.skipped and set(trials) == {"most frequent", "'.'", "'\\n'", "PrefixQuant"}
    assert [trials[n].later_outliers for n in ("most frequent", "'.'", "'\\n'", "PrefixQuant")] == [0, 1, 1, 0]
    assert trials["PrefixQuant"].prefix_strings == (" ", "Assert", "<|im_start|>")
    assert trials["PrefixQuant"].context.count(1) == 1  # never a double BOS
    ratio = {n: t.perplexity.perplexity / base.perplexity.perplexity for n, t in trials.items()}
    assert ratio["PrefixQuant"] == pytest.approx(0.979, abs=2e-3) and ratio["most frequent"] == pytest.approx(0.876, abs=2e-3)
    assert {t.perplexity.n_tokens for t in r.trials} == {base.perplexity.n_tokens}
    assert all(t.context_outliers == 16 for t in [base, *r.trials])  # one per text stays in the context
    assert r.best.name == "most frequent"
    # Gemma-3: nothing at eta = 64 (largest ratio 10.5, block 0); at eta = 8 the initial token in 12 of 16 texts
    g64, g8 = ns["g64"], ns["g8"]
    assert len(g64) == 0 and float(g64.max_ratio.max()) == pytest.approx(10.5, abs=0.05)
    assert int(g64.max_ratio.argmax()) == 0
    assert len(g8) == 12 and all(o.initial and o.blocks == (0,) for o in g8.outliers) and g8.carriers == 12
    # its large values come after the down-projection: the post-FFN norm
    largest = ns["largest"]  # measured: 139 at the down-projection input, 19 866 after the post-FFN norm
    assert largest["mlp_post"] == pytest.approx(139.2, rel=1e-3) and largest["mlp_out"] > 100 * largest["mlp_post"]
    # the residual identity holds on both (measured: largest relative error 8.3e-8 and 1.0e-7)
    for identity in ns["identities"].values():
        assert identity.holds and identity.max_error < 5e-7
