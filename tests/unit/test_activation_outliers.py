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
