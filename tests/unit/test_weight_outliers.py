"""Weight outliers: tiny models of every family, planted masked / amplified norm channels and
down-projection outliers (folded and unfolded norms), invariants of the peakedness statistic
(hypothesis), and the numbers measured on SmolLM2 and Gemma-3."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.analyses.weight_outliers import NORMS, _peaked, weight_outliers
from sd_lens.errors import InputError
from sd_lens.models.loading import model_from_hf
from sd_lens.models.tiny import char_tokenizer, tiny_hf_config
from sd_lens.models.view import model_view

MASKED, AMPLIFIED, UNIT, CHANNEL = 5, 9, 33, 21


def test_runs_on_every_family(tiny_variant, unchanged):
    with unchanged(tiny_variant):
        w = weight_outliers(tiny_variant)
    L = tiny_variant.cfg.n_layers
    assert len(w.down) == L
    has_post = model_view(tiny_variant).block(0).mlp_post_scale is not None
    for layer in range(L):
        for norm in NORMS:
            present = norm in ("ln1", "ln2") or has_post
            assert ((layer, norm) in w.norms) == present
            if present:
                n = w.norms[(layer, norm)]
                assert n.scale.shape == (tiny_variant.cfg.d_model,)
                assert n.source in ("scale", "folded")
                assert all(abs(float(n.scale[c])) <= w.mask_tol for c in n.masked)
    d = json.loads(json.dumps(w.to_dict()))
    assert len(d["down"]) == L and d["n_layers"] == L
    assert isinstance(w.summary(), str)


@pytest.mark.parametrize("kwargs", [{"mask_tol": -1}, {"gain_ratio": 1.0}, {"stat_ratio": float("inf")}, {"mask_tol": True}])
def test_bad_arguments(tiny, kwargs):
    with pytest.raises(InputError):
        weight_outliers(tiny, **kwargs)


def test_bad_queries(tiny):
    w = weight_outliers(tiny)
    for call in (lambda: w.is_masked(99, 0), lambda: w.is_masked(0, 10_000), lambda: w.is_masked(0, 0, "ln3")):
        with pytest.raises(InputError):
            call()


# ------------------------------------------------------------------------------------------------
# planted
# ------------------------------------------------------------------------------------------------
def _planted(family: str, compat: bool):
    """A 3-block tiny model whose block-1 pre-FFN norm has effective scale 0 at MASKED, whose block-1
    down-projection has one huge weight in hidden unit UNIT and one in residual channel CHANNEL, and
    (Gemma) whose block-1 post-FFN norm gains 1000 at AMPLIFIED."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config(family, n_layers=3), attn_implementation="eager").float()
    layer = hf.model.layers[1]
    with torch.no_grad():
        if family == "gemma3":
            layer.pre_feedforward_layernorm.weight[MASKED] = -1.0  # Gemma: effective scale 1 + w = 0
            layer.post_feedforward_layernorm.weight[AMPLIFIED] = 999.0  # effective 1000
        else:
            layer.post_attention_layernorm.weight[MASKED] = 0.0  # Llama: the pre-FFN norm
        down = layer.mlp.down_proj.weight  # HF layout [d_model, d_mlp]: W_out transposed
        scale = down.abs().max()
        down[3, UNIT] = 200 * scale  # row UNIT of W_out peaks
        down[CHANNEL, 50] = 200 * scale  # column CHANNEL of W_out peaks
    return model_from_hf(hf, char_tokenizer(), name=f"planted-{family}", compatibility_mode=compat)


@pytest.mark.parametrize("compat", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_planted_norm_and_down_projection(family, compat):
    w = weight_outliers(_planted(family, compat))
    assert w.norms[(1, "ln2")].source == ("folded" if compat else "scale")
    assert w.masked_before_ffn(1, MASKED)
    assert w.masked_channels("ln2") == {1: [MASKED]}  # nothing else is masked anywhere
    assert not w.masked_before_ffn(0, MASKED) and not w.masked_before_ffn(2, MASKED)
    assert not w.amplified_before_ffn(1, MASKED)
    # each spike makes its row and its column peaked: (3, UNIT) and (CHANNEL, 50) in HF layout
    assert {i for i, _, _ in w.down[1].rows} == {UNIT, 50}
    assert {i for i, _, _ in w.down[1].cols} == {3, CHANNEL}
    assert w.down[0].rows == [] and w.down[2].rows == []
    if family == "gemma3":
        assert w.amplified_channels("mlp_post") == {1: [AMPLIFIED]}
        assert w.is_amplified(1, AMPLIFIED, "mlp_post")
        assert w.max_gain(AMPLIFIED)[1] == pytest.approx(1000.0)
    else:
        assert w.amplified_channels("mlp_post") == {}


def test_planted_weights_are_left_unchanged(unchanged):
    model = _planted("gemma3", True)
    with unchanged(model):
        weight_outliers(model)


# ------------------------------------------------------------------------------------------------
# invariants of the statistic (hypothesis)
# ------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(1e-3, 1e3), ratio=st.floats(1.5, 10.0), spikes=st.integers(0, 4))
def test_peakedness_is_scale_and_permutation_invariant(seed, factor, ratio, spikes):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(40, 30, generator=g, dtype=torch.float64)
    for _ in range(spikes):
        i, j = torch.randint(0, 40, (1,), generator=g).item(), torch.randint(0, 30, (1,), generator=g).item()
        w[i, j] *= 100
    rows, _ = _peaked(w, 1, ratio)
    scaled, _ = _peaked(w * factor, 1, ratio)
    assert [i for i, _, _ in scaled] == [i for i, _, _ in rows]
    perm = torch.randperm(40, generator=g)
    permuted, _ = _peaked(w[perm], 1, ratio)
    assert sorted(int(perm[i]) for i, _, _ in permuted) == sorted(i for i, _, _ in rows)
    # every flagged row really stands out, every other does not
    a = w.abs()
    peak = a.max(1).values / a.mean(1)
    assert {i for i, _, _ in rows} == set(torch.nonzero(peak >= ratio * peak.median()).flatten().tolist())


@settings(max_examples=10, deadline=None)
@given(tol=st.floats(0.0, 2.0), gain=st.floats(1.01, 5.0))
def test_thresholds_are_monotone(tol, gain):
    model = _PLANTED.setdefault("m", _planted("gemma3", False))
    w = weight_outliers(model, mask_tol=tol, gain_ratio=gain)
    wider = weight_outliers(model, mask_tol=2 * tol + 0.1, gain_ratio=gain * 2)
    for key, n in w.norms.items():
        assert set(n.masked) <= set(wider.norms[key].masked)
        assert {c for c, _, _ in wider.norms[key].amplified} <= {c for c, _, _ in n.amplified}
        a = n.scale.abs()
        assert set(n.masked) == set(torch.nonzero(a <= tol).flatten().tolist())


_PLANTED: dict[str, object] = {}
