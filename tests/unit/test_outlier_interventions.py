"""Interventions on massive activations (Sun et al. 2024, §3) and the perplexity they are measured by."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.analyses.outlier_interventions import (
    LOGITS_HOOK,
    MassiveMeans,
    emergence_targets,
    held_out_corpus,
    intervention_hooks,
    massive_mask,
    massive_means,
    outlier_intervention,
    perplexity,
    set_entries,
    set_massive,
)
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.tiny import tiny_model
from sd_lens.runtime import act_name, forward, run, tokenize
from sd_lens.runtime.reducers import keep

TEXTS = ["hello world, this is it.", "a b c", "the quick brown fox jumps over", "x"]


def _resid(model, tokens, layer, fwd_hooks=()):
    name = act_name("resid_post", layer)
    return run(model, tokens, {name: keep}, fwd_hooks=fwd_hooks)[name]


# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------
def test_set_entries_changes_exactly_the_requested_entries(tiny):
    tokens = tokenize(tiny, [TEXTS[2]]).sequences[0]
    name = act_name("resid_post", 0)
    chans, positions = [3, 17, 40], [0, 2]
    values = torch.tensor([[7.0, -3.0, 0.0], [1.5, 2.5, -9.0]])
    clean = _resid(tiny, tokens, 0)
    edited = _resid(tiny, tokens, 0, [(name, set_entries(chans, positions, values))])
    changed = (edited != clean)
    expect = torch.zeros_like(changed)
    expect[:, torch.tensor(positions)[:, None], torch.tensor(chans)[None, :]] = True
    assert not (changed & ~expect).any()  # nothing else moved
    assert torch.equal(edited[0][torch.tensor(positions)[:, None], torch.tensor(chans)[None, :]], values)
    # and the edit reaches the next block: its input is the edited state
    nxt = run(tiny, tokens, {act_name("resid_pre", 1): keep}, fwd_hooks=[(name, set_entries(chans, positions, values))])
    assert torch.equal(nxt[act_name("resid_pre", 1)], edited)


def test_set_massive_in_a_model_edits_the_massive_entries_only(tiny):
    # a random-init model has no massive activation: a low ratio makes some entries qualify
    tokens = tokenize(tiny, [TEXTS[0]]).sequences[0]
    name = act_name("resid_post", 1)
    chans = list(range(0, 64, 3))
    clean = _resid(tiny, tokens, 1)
    mask = massive_mask(clean, chans, relative=2.0, absolute=None)
    assert 0 < int(mask.sum()) < mask.numel()
    tally: dict[str, int] = {}
    hook = set_massive(chans, initial=11.0, other=-5.0, relative=2.0, absolute=None, tally=tally)
    edited = _resid(tiny, tokens, 1, [(name, hook)])
    full = torch.zeros_like(clean, dtype=torch.bool)
    full[..., chans] = mask
    assert torch.equal(edited[~full], clean[~full])
    sub = edited[..., chans]
    assert (sub[:, 0][mask[:, 0]] == 11.0).all() and (sub[:, 1:][mask[:, 1:]] == -5.0).all()
    assert tally == {"initial": int(mask[:, 0].sum()), "other": int(mask[:, 1:].sum())}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 3),
    pos=st.integers(1, 9),
    width=st.integers(4, 24),
    relative=st.floats(1.5, 50.0),
    absolute=st.one_of(st.none(), st.floats(0.0, 20.0)),
    pad=st.integers(0, 4),
)
def test_massive_mask_is_the_criterion_and_set_massive_touches_nothing_else(seed, rows, pos, width, relative, absolute, pad):
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(rows, pos, width, generator=g)
    big = torch.rand(rows, pos, width, generator=g) < 0.1
    act = torch.where(big, act * 100, act)
    lengths = torch.randint(1, pos + 1, (rows,), generator=g) if pad else torch.full((rows,), pos)
    real = torch.arange(pos)[None] < lengths[:, None]
    chans = sorted(set(torch.randint(0, width, (3,), generator=g).tolist()))
    mask = massive_mask(act, chans, relative=relative, absolute=absolute, real=real)
    for b in range(rows):  # brute force: numpy's median over the real positions of the row
        a = act[b, : int(lengths[b])].abs().numpy()
        med = float(np.median(a))
        for t in range(pos):
            for j, c in enumerate(chans):
                v = abs(float(act[b, t, c]))
                want = t < lengths[b] and v >= relative * med and v > 0 and (absolute is None or v > absolute)
                assert bool(mask[b, t, j]) == want
    from sd_lens.runtime.engine import with_real_mask

    hook = set_massive(chans, initial=0.0, relative=relative, absolute=absolute)
    with with_real_mask(real):  # as inside the engine's forward of a padded batch
        out = hook(act, None)
    full = torch.zeros_like(act, dtype=torch.bool)
    full[..., chans] = mask
    assert out is not act
    assert torch.equal(out[~full], act[~full]) and (out[full] == 0).all()


# ------------------------------------------------------------------------------------------------
# perplexity
# ------------------------------------------------------------------------------------------------
def test_perplexity_is_exp_of_the_mean_nll_computed_by_hand(tiny):
    p = perplexity(tiny, TEXTS, batch_size=3)
    total, n = 0.0, 0
    for s in tokenize(tiny, TEXTS).sequences:
        logits = forward(tiny, s[None], return_type="logits")[0].double()
        lp = torch.log_softmax(logits, -1)
        total -= float(lp[:-1].gather(-1, s[1:, None]).sum())
        n += len(s) - 1
    assert p.n_tokens == n and p.n_texts == len(TEXTS)
    assert p.mean_nll == pytest.approx(total / n, abs=1e-5)
    assert p.perplexity == pytest.approx(math.exp(total / n), rel=1e-5)
    assert p.kl == 0.0 and p.clean_mean_nll == p.mean_nll


def test_identity_intervention_has_zero_kl_and_the_clean_nll(tiny):
    clean = perplexity(tiny, TEXTS, batch_size=2)
    ident = [(act_name("resid_post", 0), lambda act, hook: act.clone())]
    p = perplexity(tiny, TEXTS, ident, batch_size=2)
    assert p.kl == pytest.approx(0.0, abs=1e-7)
    assert p.mean_nll == pytest.approx(clean.mean_nll, abs=1e-6)
    assert p.clean_mean_nll == pytest.approx(clean.mean_nll, abs=1e-6)


def test_intervened_perplexity_matches_a_hand_computation_and_kl_is_positive(tiny):
    hooks = [(act_name("resid_post", 0), set_entries([1, 5, 9], [0, 1], 3.0))]
    p = perplexity(tiny, TEXTS, hooks, batch_size=3)
    nll, kl, n = 0.0, 0.0, 0
    for s in tokenize(tiny, TEXTS).sequences:
        lc = torch.log_softmax(forward(tiny, s[None], return_type="logits")[0].double(), -1)[:-1]
        li = torch.log_softmax(forward(tiny, s[None], return_type="logits", fwd_hooks=hooks)[0].double(), -1)[:-1]
        nll -= float(li.gather(-1, s[1:, None]).sum())
        kl += float((lc.exp() * (lc - li)).sum())
        n += len(s) - 1
    assert p.mean_nll == pytest.approx(nll / n, abs=1e-5)
    assert p.kl == pytest.approx(kl / n, abs=1e-6) and p.kl > 0
    no_kl = perplexity(tiny, TEXTS, hooks, kl=False, batch_size=3)  # one plain forward per batch
    assert no_kl.mean_nll == pytest.approx(p.mean_nll, abs=1e-5) and no_kl.kl is None


def test_perplexity_does_not_depend_on_the_batch_size_even_with_run_time_detection():
    model = tiny_model("llama", seed=1, n_layers=2)
    hooks = [(act_name("resid_post", 0), set_massive(list(range(0, 64, 2)), relative=2.0, absolute=None))]
    a = perplexity(model, TEXTS, hooks, batch_size=1)
    b = perplexity(model, TEXTS, hooks, batch_size=4)  # padded rows: the median ignores the pads
    assert a.mean_nll == pytest.approx(b.mean_nll, abs=1e-5) and a.kl == pytest.approx(b.kl, abs=1e-6)



@pytest.mark.parametrize("batch_size", [2, 16])
def test_edited_perplexities_are_each_edits_own_perplexity(batch_size):
    """Every edit in shared forwards with one clean copy (rows [clean | edit 1 | ... | edit k]) gives what
    perplexity() gives for it alone — also an edit that reads real_mask() (the run-time median of set_massive),
    an empty edit (KL 0), and more edits than one forward holds (2 * batch_size - 1: split into several calls)."""
    from sd_lens.analyses.metrics import edited_perplexities

    model = tiny_model("llama", seed=1, n_layers=2)
    edits = [
        [(act_name("resid_post", 0), set_entries([1, 5, 9], [0, 1], 3.0))],
        [(act_name("resid_post", 0), set_massive(list(range(0, 64, 2)), relative=2.0, absolute=None))],
        [],
        [(act_name("resid_post", 1), set_entries([2], [0], -4.0)), (act_name("resid_post", 0), set_entries([3], [1], 2.0))],
    ] * 3
    clean, runs = edited_perplexities(model, TEXTS, edits, batch_size=batch_size)
    alone = perplexity(model, TEXTS, batch_size=4)
    assert clean.mean_nll == pytest.approx(alone.mean_nll, abs=1e-6) and clean.kl == 0.0
    assert clean.n_tokens == alone.n_tokens and len(runs) == len(edits)
    for edit, p in zip(edits, runs):
        own = perplexity(model, TEXTS, edit, batch_size=4)
        assert p.mean_nll == pytest.approx(own.mean_nll, abs=1e-5)
        assert p.kl == pytest.approx(own.kl, abs=1e-6)
        assert p.clean_mean_nll == pytest.approx(alone.mean_nll, abs=1e-6) and p.n_tokens == own.n_tokens
    assert runs[2].kl == pytest.approx(0.0, abs=1e-7) and runs[0].kl > 0
    with pytest.raises(InputError, match="batch_size"):
        edited_perplexities(model, TEXTS, edits, batch_size=0)

# ------------------------------------------------------------------------------------------------
# means and the analysis
# ------------------------------------------------------------------------------------------------
def test_massive_means_are_the_means_of_the_massive_entries_by_hand(tiny):
    chans = [2, 7, 30]
    got = massive_means(tiny, {1: chans}, TEXTS, relative=2.0, absolute=None, batch_size=3)[1]
    s = torch.zeros(2, 3, dtype=torch.float64)
    n = torch.zeros(2, 3)
    for seq in tokenize(tiny, TEXTS).sequences:
        act = _resid(tiny, seq, 1)
        m = massive_mask(act, chans, relative=2.0, absolute=None)[0]
        v = act[0][:, chans].double()
        s[0] += (v[0] * m[0]).squeeze(0)
        n[0] += m[0]
        s[1] += (v[1:] * m[1:]).sum(0)
        n[1] += m[1:].sum(0)
    want = s / n.clamp(min=1)
    for k, field in enumerate(("initial", "other")):
        val = getattr(got, field)
        for j in range(3):
            if n[k, j] == 0:
                assert math.isnan(float(val[j]))
            else:
                assert float(val[j]) == pytest.approx(float(want[k, j]), rel=1e-5, abs=1e-6)
    assert got.n_initial == tuple(int(x) for x in n[0]) and got.n_other == tuple(int(x) for x in n[1])


def test_the_analysis_leaves_the_model_as_it_was(tiny, unchanged):
    with unchanged(tiny):
        r = outlier_intervention(
            tiny, {1: [0, 4, 9]}, TEXTS[2:], texts=TEXTS[:2], relative=2.0, absolute=None, batch_size=2
        )
    assert set(r.runs) == {"zero", "mean"} and r.targets == {1: (0, 4, 9)}
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["clean"]["n_tokens"] == r.clean.n_tokens and d["means"]["1"]["channels"] == [0, 4, 9]
    assert r.runs["zero"].clean_mean_nll == pytest.approx(r.clean.mean_nll, abs=1e-6)


def test_emergence_targets_put_each_channel_at_its_first_massive_block(tiny):
    from sd_lens.analyses.activation_outliers import activation_outliers

    ao = activation_outliers(tiny, TEXTS, relative=3.0, absolute=None, sites=("resid_post",))
    targets = emergence_targets(ao)
    chans = ao.channels("resid_post")
    assert chans and sorted(c for cs in targets.values() for c in cs) == sorted(chans)
    for block, cs in targets.items():
        for c in cs:
            assert ao.blocks_of(c)[0] == block
    every = emergence_targets(ao, at="all")
    for c in chans:
        assert sorted(b for b, cs in every.items() if c in cs) == ao.blocks_of(c)
    with pytest.raises(InputError, match="not a resid_post outlier"):
        emergence_targets(ao, [c for c in range(64) if c not in chans][:1])


def test_held_out_corpus_is_disjoint_from_the_default_corpus():
    held = held_out_corpus(48)
    assert len(held) == 48 and not set(held) & set(default_corpus())
    assert held_out_corpus(10, skip=5) == default_corpus(15)[5:]


def test_bad_arguments_raise_before_any_forward(tiny):
    texts = default_corpus(4)
    with pytest.raises(InputError, match="also in"):
        outlier_intervention(tiny, {0: [1]}, texts[:2], texts=texts)
    with pytest.raises(InputError, match="modes"):
        outlier_intervention(tiny, {0: [1]}, modes=("half",))
    with pytest.raises(InputError, match="block"):
        outlier_intervention(tiny, {99: [1]}, ["a b"], texts=["c d"])
    with pytest.raises(InputError, match="channel"):
        outlier_intervention(tiny, {0: [10_000]}, ["a b"], texts=["c d"])
    with pytest.raises(InputError, match="channels"):
        set_entries([1, 1], [0])
    with pytest.raises(InputError, match="MassiveMeans"):
        intervention_hooks({0: [1]}, "mean")
    with pytest.raises(InputError, match="batch_size"):
        perplexity(tiny, ["a b"], batch_size=0)
    nan_means = MassiveMeans(0, (1,), torch.tensor([math.nan]), torch.tensor([math.nan]), (0,), (0,), 1)
    with pytest.raises(InputError, match="has a mean"):
        intervention_hooks({0: nan_means}, "mean")


def test_logits_hook_is_the_models_logits(tiny):
    tokens = tokenize(tiny, [TEXTS[0]]).sequences[0]
    assert torch.equal(run(tiny, tokens, {LOGITS_HOOK: keep})[LOGITS_HOOK], forward(tiny, tokens[None], return_type="logits"))
