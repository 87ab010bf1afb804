"""Weight outliers: tiny models of every family, planted masked / amplified norm channels and
down-projection outliers (folded and unfolded norms), invariants of the peakedness statistic
(hypothesis), and the numbers measured on SmolLM2 and Gemma-3."""
from __future__ import annotations

from sd_lens.analyses.weight_outliers import weight_outliers


# ------------------------------------------------------------------------------------------------
# real models
# ------------------------------------------------------------------------------------------------
def test_smollm2_weight_outliers(smollm2):
    w = weight_outliers(smollm2)
    masked = w.masked_channels("ln2")
    # measured (folded norms: W_in / W_gate rows exactly 0): the pre-FFN norm masks channel 247 in
    # blocks 1-10 and channel 507 (the massive-activation channel) in blocks 11-26, and 507 also in block 1
    assert all(247 in masked[b] for b in range(1, 11))
    assert all(masked[b] == [507] for b in range(11, 27))
    assert 507 in masked[1]
    assert all(w.norms[(b, "ln2")].source == "folded" for b in range(w.n_layers))
    assert w.amplified_channels("mlp_post") == {}  # no post norms in Llama
    # measured: at block 11 the two most peaked down-projection rows are hidden units 1487 and 1229
    # (max|w|/mean|w| ~198 and ~195, ~44x the block's median) - the units whose activations reach 1 119
    # and 3 065 on the initial token there
    assert sorted(i for i, _, _ in w.down[11].rows[:2]) == [1229, 1487]
    assert all(r > 40 for _, _, r in w.down[11].rows[:2])


def test_gemma3_weight_outliers(gemma3):
    w = weight_outliers(gemma3)
    masked = w.masked_channels("ln2")
    # measured: the pre-FFN norm masks channel 400 in blocks 0-6 and channel 163 in blocks 5 and 7-17
    assert all(400 in masked[b] for b in range(0, 7))
    assert [b for b in masked if 163 in masked[b]] == [5, *range(7, 18)]
    # measured: post-FFN gains on channel 163 at blocks 3, 4, 5: 585, 609, 741 (85-132 x the norm's median)
    gains = w.max_gain(163, "mlp_post")
    assert [round(gains[b]) for b in (3, 4, 5)] == [585, 609, 741]
    for b in (3, 4, 5):
        assert w.amplified_channels("mlp_post")[b][0] == 163
    # measured: the post-attention norm amplifies 400 in blocks 0-5 (52.5 to 513)
    assert all(w.is_amplified(b, 400, "attn_post") for b in range(0, 6))
