"""Component attribution of defects (attention / FFN per block) and the lever chosen from it."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import planted_bos_model
from sd_lens.analyses.attribution import (
    component_attribution,
    explosion_set,
    find_lever,
    lever_candidates,
    lever_sites,
    remove_along,
    remove_matched,
    sublayer_components,
)
from sd_lens.analyses.defects import find_defects, residual_trajectories
from sd_lens.analyses.probe import probe_norms
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.linalg import unit
from sd_lens.models.view import model_view
from sd_lens.runtime.engine import run
from sd_lens.runtime.tokens import tokenize

TEXTS = ["the cat sat on the mat", "a dog ran far away", "hello there world", "one two three four"]
ALPHABET = "abcdefghij klmnop,.!"


# ------------------------------------------------------------------------------------------------
# the split adds up to the residual update, on every family
# ------------------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(ALPHABET, min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=4),
    cut=st.integers(0, 11),
    seed=st.integers(0, 2**16),
)
def test_attn_plus_ffn_is_the_residual_update(tiny, texts, cut, seed):
    """start + cumsum(attn + ffn) equals the resid_post component read independently, at every block."""
    seqs = tokenize(tiny, texts, max_tokens_per_text=None).sequences
    prefixes = [s[: 1 + min(cut, len(s) - 1)] for s in seqs]
    dirs = torch.randn(3, int(tiny.cfg.d_model), generator=torch.Generator().manual_seed(seed))
    parts = sublayer_components(tiny, prefixes, dirs)
    assert parts.split == "hooks" and parts.closure_error < 1e-5
    traj = residual_trajectories(tiny, prefixes).double()  # [K, L + 1, d]: resid_pre 0, then resid_post of each block
    u = unit(dirs.double()).T
    expected = traj @ u
    rebuilt = parts.start.double()[:, None] + (parts.attn.double() + parts.ffn.double()).cumsum(1)
    scale = traj.norm(dim=-1).amax() + 1
    assert torch.allclose(rebuilt, expected[:, 1:], atol=1e-5 * float(scale))
    assert torch.allclose(parts.start.double(), expected[:, 0], atol=1e-6 * float(scale))
    assert torch.allclose(parts.post.double(), expected[:, 1:], atol=1e-6 * float(scale))
    if not parts.parallel:  # sequential blocks: the hooks and the residual differences agree
        diff = sublayer_components(tiny, prefixes, dirs, split="differences")
        assert diff.split == "differences"
        assert torch.allclose(diff.attn, parts.attn, atol=1e-5 * float(scale))
        assert torch.allclose(diff.ffn, parts.ffn, atol=1e-5 * float(scale))


def test_parallel_blocks_are_split_by_their_hooks(tiny):
    """GPT-NeoX runs attention and FFN in parallel: no resid_mid, the hooks are the only exact split."""
    seqs, dirs = tokenize(tiny, ["ab"]).sequences, torch.ones(1, int(tiny.cfg.d_model))
    parts = sublayer_components(tiny, seqs, dirs)
    assert parts.parallel == (model_view(tiny).family == "neox")
    if parts.parallel:
        with pytest.raises(InputError, match="parallel"):
            sublayer_components(tiny, seqs, dirs, split="differences")


@settings(max_examples=200, deadline=None)
@given(
    total=st.lists(st.floats(-50, 100, allow_nan=False), min_size=1, max_size=12),
    start=st.floats(-20, 20, allow_nan=False),
    fraction=st.floats(0.05, 1.0),
)
def test_explosion_set_is_the_smallest_set_reaching_the_fraction(total, start, fraction):
    t = torch.tensor(total, dtype=torch.float64)
    comp = start + t.cumsum(0)
    peak = int(comp.argmax())
    blocks, reached = explosion_set(t, peak, float(comp[peak]), fraction)
    if float(comp[peak]) <= 0:
        assert blocks == [] and reached == 0.0
        return
    assert all(b <= peak and total[b] > 0 for b in blocks)
    assert reached == pytest.approx(sum(total[b] for b in blocks) / float(comp[peak]))
    positive = sorted((v for v in total[: peak + 1] if v > 0), reverse=True)
    need = fraction * float(comp[peak])
    if sum(positive) >= need:
        assert reached >= fraction - 1e-12
        # minimal: the largest len(blocks) - 1 totals do not reach it
        assert sum(positive[: len(blocks) - 1]) < need
    else:
        assert len(blocks) == len(positive)  # every adding block, and it says it falls short


# ------------------------------------------------------------------------------------------------
# a planted tiny model: end to end
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    """A 4-block tiny Llama with a 40x BOS embedding and its defects (an initial-token defect)."""
    model = planted_bos_model()
    probe = probe_norms(model, TEXTS)
    return model, probe, find_defects(model, probe)


def test_attribution_of_a_planted_defect(planted):
    model, probe, report = planted
    att = component_attribution(model, report, probe)
    assert len(att) == len(report) >= 1 and att.split == "hooks" and att.closure_error < 1e-5
    for a, d in zip(att, report):
        assert a.initial_token and a.n_carriers == 1 and a.carriers[0].tolist() == [model.tokenizer.bos_token_id]
        assert torch.allclose(a.attn + a.ffn, a.total)
        assert torch.allclose(a.start + a.total.double().cumsum(0).float(), a.component, atol=1e-3)
        assert d.first_layer <= a.peak_layer <= d.last_layer
        # the planted BOS is large from the embedding on: its blocks add little of its peak
        assert a.start > 0.9 * a.peak_component and a.reached < a.fraction
    json.dumps(att.to_dict())


def test_lever_leaves_no_hooks_and_the_model_unchanged(planted, unchanged):
    model, probe, report = planted
    att = component_attribution(model, report, probe)
    with unchanged(model):
        levers = find_lever(model, report, att, n_seeds=3)
    assert len(levers) == len(report)
    for lev in levers:
        assert lev.name in [n for n, _ in lever_candidates(att[lev.defect])]
        assert lev.norms_control.shape == (3, 4) and lev.seeds == [0, 1, 2]
        assert len(lev.removed) == len(lev.sites) and all(x >= 0 for x in lev.removed)
    json.dumps(levers.to_dict())


def test_bad_arguments_are_clear_errors_before_any_forward(planted):
    model, probe, report = planted
    for kwargs in ({"max_carriers": 0}, {"fraction": 0.0}, {"fraction": 1.5}, {"split": "nope"}, {"rtol": -1.0}):
        with pytest.raises(InputError):
            component_attribution(model, report, probe, **kwargs)
    att = component_attribution(model, report, probe)
    for kwargs in ({"n_seeds": 0}, {"target": 0.0}, {"target": float("nan")}):
        with pytest.raises(InputError):
            find_lever(model, report, att, **kwargs)


def test_removal_hooks_return_new_tensors_of_the_asked_size():
    act = torch.randn(2, 3, 8)
    u = unit(torch.randn(8))
    seen: list[float] = []
    out = remove_along(u, [0], seen)(act, None)
    assert out is not act and torch.allclose(out[:, 0] @ u, torch.zeros(2), atol=1e-5)
    assert torch.equal(out[:, 1:], act[:, 1:]) and seen == [pytest.approx(float((act[:, 0] @ u).abs().max()))]
    r = unit(torch.randn(8))
    out = remove_matched(r, 2.5, [1])(act, None)
    assert torch.allclose((act[:, 1] - out[:, 1]).norm(dim=-1), torch.full((2,), 2.5))
    assert bool(((out[:, 1] @ r).abs() < (act[:, 1] @ r).abs() + 2.5).all()) and torch.equal(out[:, 0], act[:, 0])


# ------------------------------------------------------------------------------------------------
# real models (the first texts of the default corpus: 8 for SmolLM2, 12 for Gemma-3, to stay under 40 s)
# ------------------------------------------------------------------------------------------------
_cache: dict[str, tuple] = {}


def _analysed(model, key, n_texts):
    if key not in _cache:
        probe = probe_norms(model, default_corpus(n_texts))
        report = find_defects(model, probe)
        _cache[key] = (probe, report, component_attribution(model, report, probe))
    return _cache[key]


def test_smollm2_one_block_explosions_and_a_specific_ffn_lever(smollm2):
    probe, report, att = _analysed(smollm2, "smollm2", 8)
    assert att.split == "hooks" and att.closure_error < 1e-5  # measured: 4.2e-7
    assert [(a.initial_token, a.explosion_set, a.peak_layer) for a in att] == [(True, [1, 2], 2), (True, [11], 11)]
    d1 = att[1]
    assert d1.dominant(11) == "ffn" and float(d1.ffn[11]) == pytest.approx(25035, rel=0.01)  # measured: 25 035
    assert d1.reached > 0.99  # measured: 0.999
    levers = find_lever(smollm2, report, att)
    lev = {x.label: x for x in levers}
    one = lev["D1"]
    assert one.sites == [(11, "ffn")] and one.peak_layer == 11
    assert one.peak_clean == pytest.approx(25102, rel=1e-3)  # measured: 25 102
    assert one.reduction == pytest.approx(0.924, abs=0.01)  # measured: 0.9237
    # measured control (5 seeds): the matched random vector raises the peak to 34 241 .. 35 629
    assert one.control_reductions.max() < -0.3 and one.specific
    # D0: no candidate reaches half of its window's peak; the best is chosen
    zero = lev["D0"]
    assert zero.window == (1, 10) and not zero.achieved and zero.specific
    assert [c.reduction for c in zero.candidates] == pytest.approx([0.443, 0.470, 0.465], abs=0.01)  # measured
    assert zero.name == "both sublayers at the explosion set"
    assert zero.control_reductions.max() < -1.0  # measured: peaks 1 913 .. 1 985 against 810 clean


def test_gemma3_multi_block_build_up_and_its_lever(gemma3):
    probe, report, att = _analysed(gemma3, "gemma3", 12)
    assert att.split == "hooks" and att.closure_error < 1e-5  # measured: 1.5e-7
    assert len(att) == 1
    a = att[0]
    assert a.initial_token and a.peak_layer == 14
    assert a.explosion_set == [3, 4, 5, 6, 7, 8, 11]  # measured, reaches 0.863 of the peak component
    assert all(a.dominant(layer) == "ffn" for layer in a.explosion_set)
    assert all(10_000 < float(a.ffn[layer]) < 15_000 for layer in range(3, 9))  # measured: 10 369 .. 13 691
    levers = find_lever(gemma3, report, att)
    lev = levers[0]
    assert lev.peak_clean == pytest.approx(103827, rel=1e-3) and lev.peak_layer == 14  # measured: 103 827
    # the lever acts on the FFN outputs before the post-FFN norm (its gains reach 585-741 on the defect channel)
    assert lev.hooks == [f"blocks.{layer}.mlp.hook_out" for layer in a.explosion_set]
    assert lev.name == "dominant sublayer at the explosion set" and lev.achieved
    assert lev.reduction == pytest.approx(0.750, abs=0.01)  # measured: 0.7496 (peak 25 994)
    # measured control (5 seeds): -38.2 % .. -60.2 %, mean -47.5 %: the lever removes more under every seed
    cr = lev.control_reductions
    assert float(cr.mean()) == pytest.approx(0.475, abs=0.03) and float(cr.max()) < 0.65 and lev.specific
    # measured: 0.65 .. 14.8 removed from pre-norm outputs of norm 0.09 .. 2 (clean): up to 150x, yet bounded by the norm
    assert lev.removed[0] == pytest.approx(0.651, abs=0.02) and max(lev.relative_size) > 50


def test_lever_edits_before_the_post_norm_where_it_exists(tiny):
    """Where a block has a post-norm, the lever's hook is the pre-norm output, checked to give the normed one."""
    model = tiny
    n_layers = int(model.cfg.n_layers)
    direction = torch.randn(int(model.cfg.d_model), generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[1, 5, 7]])
    where, base = lever_sites(model, tokens, direction, n_layers)
    # a HookedTransformer has no hook before the post-norm: its lever edits after it (hook_mlp_out)
    post = model_view(model).block(0).mlp_post_scale is not None and "blocks.0.mlp.hook_out" in model.hook_dict
    hook, w = where[(0, "ffn")]
    assert hook == ("blocks.0.mlp.hook_out" if post else "blocks.0.hook_mlp_out")
    assert ((0, "ffn") in base) == post
    if post:  # the removed direction is gamma * u: the normed output then has no component along u
        names = ["blocks.0.hook_mlp_out"]
        out = run(model, tokens, {n: (lambda a, b: a[0, 0].float()) for n in names}, fwd_hooks=[(hook, remove_along(w, [0]))])
        u = direction / direction.norm()
        assert abs(float(out[names[0]] @ u)) < 1e-4 * float(out[names[0]].norm())
