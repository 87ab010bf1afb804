"""The FFN's local Jacobian at a defect token, and causal checks with matched random controls."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import planted_bos_model, token_embedding
from sd_lens.analyses.attribution import component_attribution, remove_along, remove_matched
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.local_jacobian import (
    KINDS,
    added_value_map,
    jacobian_at,
    local_causal_checks,
    local_jacobian,
    row_edits,
    subtract,
)
from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import InputError
from sd_lens.linalg import unit
from sd_lens.models.tiny import tiny_model
from sd_lens.models.view import model_view
from sd_lens.runtime.engine import run
from sd_lens.runtime.hooks import ffn_input
from sd_lens.runtime.tokens import tokenize

TEXTS = ["the cat sat on the mat", "a dog ran far away", "hello there world", "one two three four"]


# ------------------------------------------------------------------------------------------------
# the map is the real one, and jacrev is its derivative (every family)
# ------------------------------------------------------------------------------------------------
def test_the_map_closes_on_the_real_hook_value(tiny):
    toks = tokenize(tiny, ["the cat sat"], max_tokens_per_text=None).sequences[0]
    view = model_view(tiny)
    for layer in range(int(tiny.cfg.n_layers)):
        for position in (0, -1):
            loc = local_jacobian(tiny, layer, toks, position=position, direction=torch.randn(64), view=view)
            assert loc.closes and loc.closure_error < 1e-5  # measured: 1e-7 .. 3e-7
            # the float64 map is BlockView's arithmetic
            blk = view.block(layer)
            ref = blk.post_norm(blk.ffn_out(loc.n), blk.mlp_post_scale)
            assert torch.allclose(added_value_map(blk, torch.float32)(loc.n), ref, rtol=1e-5, atol=1e-6)
            assert loc.J.shape == (64, 64) and loc.sigma[0] >= loc.sigma[1] >= 0
            assert loc.gaussian is not None and 0 <= loc.angles()["v_local_to_v0"] <= 90
            json.dumps(loc.to_dict())


def test_jacrev_matches_central_differences(tiny):
    toks = tokenize(tiny, ["hello world"], max_tokens_per_text=None).sequences[0]
    loc = local_jacobian(tiny, 0, toks, gaussian=None)
    blk = model_view(tiny).block(0)
    f = added_value_map(blk)
    n = loc.n.double()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        e = unit(torch.randn(64, generator=gen, dtype=torch.float64))
        h = 1e-5
        fd = (f(n + h * e) - f(n - h * e)) / (2 * h)
        jv = loc.J.double() @ e
        assert float((fd - jv).norm() / jv.norm()) < 1e-4  # J is stored float32


@pytest.fixture(scope="module")
def base_view():
    return model_view(tiny_model("llama", n_layers=1, d_model=8)).block(0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), d=st.integers(3, 12), d_mlp=st.integers(2, 20), post=st.booleans())
def test_linear_block_jacobian_is_the_linear_map(base_view, seed, d, d_mlp, post):
    """relu with every pre-activation positive is the identity: the FFN is affine, J its linear map."""
    g = torch.Generator().manual_seed(seed)
    W_in, W_out = torch.randn(d, d_mlp, generator=g), torch.randn(d_mlp, d, generator=g)
    gamma = torch.rand(d, generator=g) + 0.1
    n = torch.randn(d, generator=g)
    b_in = ((n * gamma) @ W_in).abs() + 1.0 + 10 * d  # pre-activations stay positive around n
    blk = dataclasses.replace(
        base_view,
        ln2_scale=gamma, ln2_bias=None, W_in=W_in, b_in=b_in, W_gate=None, b_gate=None, W_out=W_out, b_out=None,
        act_fn="relu", mlp_post_scale=None,
    )
    _, J = jacobian_at(blk, n)
    L = (gamma.double()[:, None] * W_in.double() @ W_out.double()).T  # column form: J = (diag(γ) W_in W_out)ᵀ
    assert torch.allclose(J, L, rtol=1e-10, atol=1e-10)
    if post:  # with a post-norm, J is the post-norm's Jacobian times L (chain rule, checked by jvp)
        s = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
        blk2 = dataclasses.replace(blk, mlp_post_scale=s.float())
        y = added_value_map(blk2, post_norm=False)(n)
        _, J2 = jacobian_at(blk2, n)
        e = torch.randn(d, generator=g, dtype=torch.float64)
        _, jv = torch.func.jvp(lambda t: blk2.post_norm(t, s.float().double()), (y,), (L @ e,))
        assert torch.allclose(J2 @ e, jv, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# hooks and the matched control
# ------------------------------------------------------------------------------------------------
def test_subtract_hook_returns_a_new_tensor():
    act = torch.randn(2, 3, 8)
    v = torch.randn(8)
    out = subtract(v, [1])(act, None)
    assert out is not act and torch.allclose(act[:, 1] - out[:, 1], v.expand(2, 8))
    assert torch.equal(out[:, [0, 2]], act[:, [0, 2]])


def test_matched_control_removes_exactly_the_norm_the_intervention_removed(tiny):
    """The control edit, read back at the FFN input of the real model, has the intervention's norm."""
    toks = tokenize(tiny, ["the cat sat"], max_tokens_per_text=None).sequences[0][None]
    name = ffn_input(0)
    v = unit(torch.randn(64, generator=torch.Generator().manual_seed(1)))

    def read(hooks):
        return run(tiny, toks, {name: lambda a, b: a[0, 2].double()}, fwd_hooks=hooks)[name]

    clean = read([])
    sizes: list[float] = []
    ablated = read([(name, remove_along(v, [2], sizes))])
    assert float((clean - ablated).norm()) == pytest.approx(sizes[0], rel=1e-5)
    for s in range(5):
        r = unit(torch.randn(64, generator=torch.Generator().manual_seed(100 + s)))
        ctrl = read([(name, remove_matched(r, sizes[0], [2]))])
        assert float((clean - ctrl).norm()) == pytest.approx(sizes[0], rel=1e-5)


# ------------------------------------------------------------------------------------------------
# the checks end to end: planted initial-token and noninitial defects
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    model = planted_bos_model()
    probe = probe_norms(model, TEXTS)
    return model, probe, find_defects(model, probe)


def test_checks_of_a_planted_initial_defect_leave_the_model_unchanged(planted, unchanged):
    model, probe, report = planted
    att = component_attribution(model, report, probe)
    with unchanged(model):
        rep = local_causal_checks(model, report, probe, att, n_seeds=3, kinds=("gaussian_v0", "local_steer"))
    assert len(rep) == len(report) >= 1
    for chk, a in zip(rep, att):
        assert chk.blocks == (a.explosion_set or [a.peak_layer]) and chk.n_carriers == 1
        assert all(j.closes for j in chk.jacobians.values())
        sites = [[b] for b in chk.blocks] + ([chk.blocks] if len(chk.blocks) > 1 else [])
        assert len(chk.interventions) == 2 * len(sites)
        for x in chk.interventions:
            assert x.control_reductions.shape == (3,) and x.seeds == [0, 1, 2]
            assert len(x.removed) == len(x.blocks) and all(r >= 0 for r in x.removed)
            if x.kind == "gaussian_v0" and not x.combined:  # a projection removes |n · v0|
                loc = chk.jacobians[x.blocks[0]]
                assert x.removed[0] == pytest.approx(abs(float(loc.n @ loc.gaussian.v0)), rel=1e-4)
        assert chk.patches and all(p.position > 0 for p in chk.patches)
    json.dumps(rep.to_dict())


def test_local_cancel_removes_what_the_linear_model_predicts(planted):
    """local_cancel is the minimum-norm edit that cancels u·f(n) to first order: its predicted change is -added."""
    model, probe, report = planted
    rep = local_causal_checks(model, report, probe, n_seeds=1, kinds=("local_cancel",), patch=False)
    for chk in rep:
        for x in chk.interventions:
            if not x.combined:
                loc = chk.jacobians[x.blocks[0]]
                assert x.local_pred == pytest.approx(-x.fraction * loc.added, rel=1e-3, abs=1e-7)
                assert x.removed[0] == pytest.approx(x.fraction * abs(loc.added) / loc.gain, rel=1e-4)
        assert sorted({x.fraction for x in chk.interventions}) == [0.5, 1.0]


def _planted_noninitial():
    """A 4-block tiny Llama whose embedding of 'x' is 40x larger: a high-norm noninitial token."""
    model = tiny_model("llama", seed=1, n_layers=4)
    emb = token_embedding(model)
    x = int(tokenize(model, ["x"], max_tokens_per_text=None).sequences[0][-1])
    with torch.no_grad():
        emb[x] *= 40.0
    return model


def test_noninitial_defect_is_checked_on_its_own_carriers(unchanged):
    model = _planted_noninitial()
    texts = ["the x sat on the mat", "a dog x ran far", "hello there x world", "one two x three"]
    probe = probe_norms(model, texts)
    report = find_defects(model, probe)
    nonini = [d for d in report if not d.initial_token]
    assert nonini, [d.label for d in report]
    with unchanged(model):
        rep = local_causal_checks(model, report, probe, n_seeds=2, kinds=("local_steer",))
    checked = [chk for chk in rep if not chk.initial_token]
    assert checked
    for chk in checked:
        assert chk.n_carriers >= 2
        assert all(j.closes for j in chk.jacobians.values())
        assert chk.interventions and chk.patches
        # on its own carriers: the carrier is the last token of a carrier prefix, not the initial token,
        # and the patched token is another non-initial token of that prefix
        assert all(0 < p.position < p.carrier_position for p in chk.patches)
    json.dumps(rep.to_dict())


def test_bad_arguments_are_clear_errors_before_any_forward(planted):
    model, probe, report = planted
    for kwargs in ({"n_seeds": 0}, {"max_carriers": 0}, {"target": 0.0}, {"rtol": -1.0}, {"kinds": ("nope",)},
                   {"kinds": ()}, {"patch_candidates": 0}):
        with pytest.raises(InputError):
            local_causal_checks(model, report, probe, **kwargs)
    toks = torch.tensor([1, 2, 3])
    for kwargs in ({"position": 5}, {"dtype": torch.float16}, {"direction": torch.ones(3)}):
        with pytest.raises(InputError):
            local_jacobian(model, 0, toks, **kwargs)
    with pytest.raises(InputError):
        local_jacobian(model, 9, toks)
    assert set(KINDS) == {"gaussian_v0", "local_top", "local_steer", "local_cancel"}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.floats(0.0, 5.0))
def test_row_edits_are_the_single_hooks_row_by_row(seed, size):
    """One batched forward of an intervention and its controls edits each row as the single hooks would."""
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(1, 3, 8, generator=g).expand(4, 3, 8).contiguous()
    v, r, w = (torch.randn(8, generator=g) for _ in range(3))
    removed: list[float] = []
    out = row_edits([("project", v, 0.0), ("subtract", w, 0.0), ("matched", r, size), None], 1, removed)(act, None)
    one: list[float] = []
    assert torch.allclose(out[0], remove_along(v, [1], one)(act[:1], None)[0], atol=1e-6)
    assert torch.allclose(out[1], subtract(w, [1])(act[:1], None)[0], atol=1e-6)
    assert torch.allclose(out[2], remove_matched(r, size, [1])(act[:1], None)[0], atol=1e-6)
    assert torch.equal(out[3], act[3]) and out is not act
    # abs: float32 sums of a near-zero projection differ by ~3e-8 between batch layouts (seed 38084: 3.4e-5)
    assert removed[0] == pytest.approx(one[0], rel=1e-5, abs=1e-6) and removed[2] == size
    assert float((act[2] - out[2]).norm()) == pytest.approx(size, abs=1e-5)  # the matched control's exact norm
