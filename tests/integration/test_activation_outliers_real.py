"""Activation outliers (massive activations): tiny models of every family, a planted BOS channel,
streaming invariants (hypothesis) against a brute-force cache, and the numbers measured on
SmolLM2 and Gemma-3."""
from __future__ import annotations

import pytest

from sd_lens.analyses.activation_outliers import (
    activation_outliers,
    defect_channels,
)
from sd_lens.corpus import default_corpus
from sd_lens.runtime import keep, run
from sd_lens.runtime.tokens import tokenize


# ------------------------------------------------------------------------------------------------
# real models (measured on the first 8 texts of the default corpus, 32 tokens each, to stay fast;
# the full default corpus, 48 texts x 64 tokens, gives the same channels, blocks and carriers)
# ------------------------------------------------------------------------------------------------
def _real_corpus(model):
    return tokenize(model, default_corpus()[:8], max_tokens_per_text=32)


@pytest.fixture(scope="module")
def smollm2_outliers(smollm2):
    return activation_outliers(smollm2, _real_corpus(smollm2))


@pytest.fixture(scope="module")
def gemma3_outliers(gemma3):
    return activation_outliers(gemma3, _real_corpus(gemma3))


def test_smollm2_massive_activation_channel(smollm2_outliers):
    r = smollm2_outliers
    # measured: one residual channel, 507, carries every resid_post massive activation, in blocks 11..28,
    # at about 24 900 on the initial token (block median 2-10)
    assert r.channels("resid_post") == [507]
    blocks = r.blocks_of(507)
    assert blocks == list(range(11, 29))
    bos = [e for e in r.entries if e.site == "resid_post" and e.position == 0]
    assert {e.block for e in bos} == set(blocks)
    peak = r.max_abs["resid_post"][11:28, 507]
    assert float(peak.min()) == pytest.approx(24_538, rel=0.01) and float(peak.max()) == pytest.approx(24_926, rel=0.01)
    assert int(r.max_abs["resid_post"][11].argmax()) == 507
    # measured: before block 11 channel 507 already holds the largest residual value (~940 at blocks 2-7:
    # the first defect), under the 1000 x median bar
    assert all(int(r.max_abs["resid_post"][b].argmax()) == 507 for b in range(1, 11))
    assert 800 < float(r.max_abs["resid_post"][2, 507]) < 1000
    # measured: the down-projection input of block 11 peaks at ~3 065 in hidden unit 1229 on the initial token
    mlp = r.max_abs["mlp_post"][11]
    assert int(mlp.argmax()) == 1229 and float(mlp.max()) == pytest.approx(3065, rel=0.01)
    assert 1229 in r.channels("mlp_post", blocks=[11])


def test_smollm2_defects_live_in_the_outlier_channel(smollm2, smollm2_outliers):
    """Both defects of SmolLM2 (explosion blocks 2 and 11) point mostly along channel 507."""
    from sd_lens.analyses.defects import find_defects
    from sd_lens.analyses.probe import probe_norms

    report = find_defects(smollm2, probe_norms(smollm2, _real_corpus(smollm2)))
    explosions = sorted(d.explosion_layer for d in report)
    assert explosions == [2, 11]  # measured
    for d in report:
        # measured: share of channel 507 in the defect direction 0.92 (block 2) and 0.98 (block 11)
        assert defect_channels(d.direction, k=1)[0][0] == 507
        assert smollm2_outliers.outlier_share(d.direction) > 0.85


def test_gemma3_massive_activation_channels(gemma3_outliers):
    r = gemma3_outliers
    # measured: two residual channels; 400 carries the initial token's outlier in blocks 0-6 (2 984 at
    # block 0 to 8 811 at block 5), 163 from block 3 (10 428) to block 14 (103 795)
    assert set(r.channels("resid_post")) == {163, 400}
    assert r.blocks_of(400)[:4] == [0, 1, 2, 3]
    assert r.blocks_of(163)[0] == 3
    bos = {(e.block, e.channel): e.value for e in r.entries if e.site == "resid_post" and e.position == 0}
    assert bos[(0, 400)] == pytest.approx(2984, rel=0.01)
    assert bos[(3, 163)] == pytest.approx(10428, rel=0.01)
    assert bos[(14, 163)] == pytest.approx(103795, rel=0.01)
    for b in range(3, 15):
        assert int(r.max_abs["resid_post"][b].argmax()) == 163
    assert r.by_class("resid_post")["initial"] >= 18


def test_gemma3_initial_token_ffn_input_is_one_hot_in_the_masked_channel(gemma3):
    """At block 3 the initial token's normalised FFN input has ~25.2 of its norm 25.3 (= sqrt(640)) in
    one channel; the weight analysis finds the pre-FFN norm masking exactly that channel."""
    from sd_lens.analyses.weight_outliers import weight_outliers

    seq = tokenize(gemma3, ["The cat"]).sequences[0]
    name = "blocks.3.ln2.hook_normalized"
    x = run(gemma3, seq, {name: keep})[name][0, 0]
    c = int(x.abs().argmax())
    assert float(x.norm()) == pytest.approx(640**0.5, rel=0.01)
    assert float(x[c]) == pytest.approx(25.24, abs=0.05)  # measured: 25.24
    w = weight_outliers(gemma3)
    assert w.masked_before_ffn(3, c)
    assert c == 400  # measured


def test_gemma3_masked_channel_is_the_defects_main_channel(gemma3, gemma3_outliers):
    """The channel that holds the initial-token defect's state entering block l is the one the pre-FFN
    norm of block l masks: 400 for blocks 1-3, 163 for block 5 and 7-16 (not at blocks 4 and 6, where
    163 reaches the FFN while 400 stays masked)."""
    from sd_lens.analyses.defects import find_defects
    from sd_lens.analyses.probe import probe_norms
    from sd_lens.analyses.weight_outliers import weight_outliers

    report = find_defects(gemma3, probe_norms(gemma3, _real_corpus(gemma3)))
    assert len(report) == 1  # measured: one major defect, blocks 0-15, explosion at block 5
    d = report[0]
    assert d.initial_token and d.explosion_layer == 5
    w = weight_outliers(gemma3)
    main = {b: defect_channels(v, k=1)[0][0] for b, v in d.block_directions.items()}
    assert [main[b] for b in range(0, 3)] == [400, 400, 400] and all(main[b] == 163 for b in range(3, 16))
    masked_entering = [b for b in range(1, 17) if w.masked_before_ffn(b, main[b - 1])]
    assert masked_entering == [1, 2, 3, 5, *range(7, 17)]
    # the defect's direction lives in the two massive-activation channels
    assert defect_channels(d.direction, k=1)[0][0] == 163  # measured share 0.89 (400: 0.11)
    assert gemma3_outliers.outlier_share(d.direction) > 0.99  # measured 0.9993
    assert set(gemma3_outliers.channel_defects(report)) == {163, 400}
