"""Component attribution of defects (attention / FFN per block) and the lever chosen from it."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import planted_bos_model
from sd_lens.analyses.attribution import (
    component_attribution,
    explosion_set,
    remove_along,
    remove_matched,
    sublayer_components,
)
from sd_lens.analyses.causal.lever import find_lever, lever_candidates, lever_sites
from sd_lens.analyses.defects import find_defects, residual_trajectories
from sd_lens.analyses.probe import probe_norms
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
    # a peak within rounding of zero (e.g. a subnormal 5e-324) has no meaningful fraction: its
    # fraction * peak underflows to 0 (real peaks are norms of order 1 and more)
    assume(float(comp[peak]) <= 0 or float(comp[peak]) > 1e-9)
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
