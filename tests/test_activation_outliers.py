"""Activation outliers (massive activations): tiny models of every family, a planted BOS channel,
streaming invariants (hypothesis) against a brute-force cache, and the numbers measured on
SmolLM2 and Gemma-3."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import token_embedding
from sd_lens.analyses.activation_outliers import (
    SITES,
    activation_outliers,
    defect_channels,
    token_class,
)
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.tiny import tiny_model
from sd_lens.runtime import act_name, keep, run
from sd_lens.runtime.tokens import tokenize

TEXTS = ["the cat sat on the mat.", "a dog ran far away", "hello, there world\n", "one two three four"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "x", "hello", "world", ",", "."]
PLANTED_CHANNEL = 17


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def planted():
    """A 4-block tiny Llama whose BOS embedding has one channel 1000x its largest entry."""
    model = tiny_model("llama", seed=1, n_layers=4)
    emb = token_embedding(model)
    with torch.no_grad():
        emb[model.tokenizer.bos_token_id, PLANTED_CHANNEL] = 1000 * emb.abs().max()
    return model


# ------------------------------------------------------------------------------------------------
# every family
# ------------------------------------------------------------------------------------------------
def test_runs_on_every_family(tiny, unchanged):
    with unchanged(tiny):
        r = activation_outliers(tiny, TEXTS, relative=10.0, absolute=None, top_k=3)
    L = tiny.cfg.n_layers
    assert r.max_abs["resid_post"].shape == (L, tiny.cfg.d_model)
    assert r.max_abs["mlp_post"].shape == (L, tiny.cfg.d_mlp)
    assert r.channel_median["mlp_post"].shape == (L, tiny.cfg.d_mlp)
    assert r.block_median["resid_post"].shape == (L,)
    assert r.n_tokens == sum(len(s) for s in tokenize(tiny, TEXTS).sequences)
    assert r.n_median_tokens == r.n_tokens  # the corpus is smaller than the sample: exact medians
    for e in r.entries:
        assert e.site in SITES and e.token_class in ("initial", "delimiter", "weak_semantic", "other")
        assert abs(e.value) >= 10.0 * e.median
    d = json.loads(json.dumps(r.to_dict()))
    assert d["n_tokens"] == r.n_tokens and len(d["entries"]) == len(r.entries)
    assert set(r.by_block()) == {e.block for e in r.entries}


def test_one_site_only(tiny):
    r = activation_outliers(tiny, TEXTS[:2], sites=("mlp_post",), absolute=None)
    assert r.sites == ("mlp_post",) and set(r.max_abs) == {"mlp_post"}
    with pytest.raises(InputError):
        r.channels("resid_post")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"relative": 0},
        {"relative": float("nan")},
        {"absolute": -1.0},
        {"median": "token"},
        {"top_k": 0},
        {"median_tokens": 0},
        {"batch_size": 0},
        {"sites": ("resid_mid",)},
        {"sites": ()},
    ],
)
def test_bad_arguments_raise_before_any_forward(kwargs):
    model = tiny_model("llama")

    def boom(*a, **k):
        raise AssertionError("the model ran")

    model.forward = boom  # an instance attribute: a forward call would fail loudly
    with pytest.raises(InputError):
        activation_outliers(model, TEXTS, **kwargs)


# ------------------------------------------------------------------------------------------------
# planted outlier
# ------------------------------------------------------------------------------------------------
def test_planted_bos_channel_is_found_and_carried_by_the_initial_token(planted, unchanged):
    with unchanged(planted):
        r = activation_outliers(planted, _corpus(12), relative=1000.0, absolute=None)
    assert r.channels("resid_post") == [PLANTED_CHANNEL]
    entries = [e for e in r.entries if e.site == "resid_post"]
    assert {e.block for e in entries} == set(range(planted.cfg.n_layers))  # carried through every block
    assert all(e.token_class == "initial" and e.position == 0 for e in entries)
    assert all(e.ratio >= 1000 for e in entries)
    assert r.by_class("resid_post")["initial"] == len(entries)
    assert (r.max_position["resid_post"][:, PLANTED_CHANNEL] == 0).all()
    one_hot = torch.zeros(planted.cfg.d_model)
    one_hot[PLANTED_CHANNEL] = 1.0
    assert r.outlier_share(one_hot) == pytest.approx(1.0)
    one_hot_other = torch.roll(one_hot, 1)
    assert r.outlier_share(one_hot_other) == 0.0
    assert r.channel_defects([type("D", (), {"direction": one_hot, "label": "D0"})()]) == {PLANTED_CHANNEL: ("D0", 1.0)}


def test_planted_outlier_needs_the_absolute_threshold_when_asked(planted):
    """The planted value is ~1000 x 0.07 = 70: the paper's absolute 100 rules it out, None keeps it."""
    big = activation_outliers(planted, TEXTS, absolute=None)
    small = activation_outliers(planted, TEXTS, absolute=float(big.max_abs["resid_post"].max()) + 1)
    assert big.channels("resid_post") == [PLANTED_CHANNEL]
    assert small.entries == []


def test_channel_median_excludes_a_channel_that_is_large_everywhere(planted):
    """By the channel's own median a channel that is large for every token is no outlier: the planted
    BOS channel stands out within its channel (other tokens are small there)."""
    r = activation_outliers(planted, _corpus(12), relative=100.0, absolute=None, median="channel")
    assert PLANTED_CHANNEL in r.channels("resid_post")


# ------------------------------------------------------------------------------------------------
# token classes, directions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "token,position,expected",
    [
        ("<bos>", 0, "initial"),
        ("The", 0, "initial"),
        ("\n", 3, "delimiter"),
        ("  ", 3, "delimiter"),
        (" ,", 2, "delimiter"),
        ("’", 2, "delimiter"),
        (" The", 5, "weak_semantic"),
        ("of", 5, "weak_semantic"),
        (" cat", 1, "other"),
        ("$", 1, "other"),
    ],
)
def test_token_class(token, position, expected):
    assert token_class(token, position) == expected


def test_defect_channels_orders_by_share():
    d = torch.tensor([0.1, -3.0, 0.0, 4.0])
    top = defect_channels(d, k=2)
    assert [c for c, _ in top] == [3, 1]
    assert top[0][1] == pytest.approx(16 / 25.01) and top[1][1] == pytest.approx(9 / 25.01)
    with pytest.raises(InputError):
        defect_channels(torch.zeros(3))
    with pytest.raises(InputError):
        defect_channels(d, k=0)


# ------------------------------------------------------------------------------------------------
# streaming invariants (hypothesis)
# ------------------------------------------------------------------------------------------------
_SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_REFERENCE: dict[str, object] = {}


def _signature(r):
    return sorted((e.block, e.site, e.channel, e.position, e.token_id, round(e.value, 3)) for e in r.entries)


@_SETTINGS
@given(seed=st.integers(0, 10_000), batch_size=st.integers(1, 7), median_tokens=st.sampled_from([5, 40, 10_000]))
def test_invariant_to_text_order_and_batch_size(planted, seed, batch_size, median_tokens):
    texts = _corpus(9, seed=3)
    key = f"ref{median_tokens}"
    if key not in _REFERENCE:
        _REFERENCE[key] = activation_outliers(planted, texts, relative=30.0, absolute=None, median_tokens=median_tokens, top_k=3)
    ref = _REFERENCE[key]
    shuffled = texts[:]
    random.Random(seed).shuffle(shuffled)
    r = activation_outliers(planted, shuffled, relative=30.0, absolute=None, median_tokens=median_tokens,
                            top_k=3, batch_size=batch_size)
    assert _signature(r) == _signature(ref)  # type: ignore[arg-type]
    for site in SITES:
        torch.testing.assert_close(r.max_abs[site], ref.max_abs[site], rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
        torch.testing.assert_close(r.channel_median[site], ref.channel_median[site], rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]
        torch.testing.assert_close(r.block_median[site], ref.block_median[site], rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]


@_SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), family=st.sampled_from(["llama", "gemma3", "gpt2", "neox"]))
def test_maxima_and_medians_equal_a_brute_force_cache(seed, n, family):
    model = _tiny(family)
    texts = _corpus(n, seed=seed)
    r = activation_outliers(model, texts, batch_size=3, absolute=None)
    seqs = tokenize(model, texts).sequences
    for site in SITES:
        names = [act_name(site, layer) for layer in range(model.cfg.n_layers)]
        acts = [run(model, s, {nm: keep for nm in names}) for s in seqs]
        for layer, nm in enumerate(names):
            full = torch.cat([a[nm][0] for a in acts]).abs()  # [n_tokens, channels]
            torch.testing.assert_close(r.max_abs[site][layer], full.max(0).values, rtol=1e-5, atol=1e-6)
            med = torch.from_numpy(np.median(full.numpy(), axis=0))
            torch.testing.assert_close(r.channel_median[site][layer], med, rtol=1e-5, atol=1e-6)
            assert float(r.block_median[site][layer]) == pytest.approx(float(np.median(full.numpy())), rel=1e-5)
            # where the maximum is: the recorded token's value is the maximum
            for c in range(0, full.shape[1], 7):
                s, p = int(r.max_seq[site][layer, c]), int(r.max_position[site][layer, c])
                assert float(acts[s][nm][0, p, c].abs()) == pytest.approx(float(full[:, c].max()), rel=1e-5)
                assert int(r.max_token[site][layer, c]) == int(seqs[s][p])


_TINY: dict[str, object] = {}


def _tiny(family: str):
    if family not in _TINY:
        _TINY[family] = tiny_model(family, seed=2)
    return _TINY[family]


def test_subsampled_median_uses_exactly_median_tokens_states(planted):
    texts = _corpus(20, seed=5)
    r = activation_outliers(planted, texts, median_tokens=30, absolute=None)
    assert r.n_median_tokens == 30 < r.n_tokens
    full = activation_outliers(planted, texts, median_tokens=10_000, absolute=None)
    # a uniform sample of 30 of ~120 states: its median is near the exact one
    ratio = r.block_median["resid_post"] / full.block_median["resid_post"]
    assert ((ratio > 0.5) & (ratio < 2.0)).all()


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

