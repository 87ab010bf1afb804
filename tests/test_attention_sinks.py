"""Attention sinks (Gu et al., ICLR 2025) and attention outliers (An et al., ICLR 2025).

The reduction is tested as a pure function of a hand-built pattern (hypothesis), the streamed
analysis against patterns from ``run_with_cache`` on tiny models of every family, and the measured
sink figures of SmolLM2 and Gemma-3 on the default corpus against their defects.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.analyses.attention_sinks import (
    AttentionSinks,
    _reduce,
    attention_sinks,
    outlier_scores,
    sink_head_view,
    sink_scores,
)
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.tiny import tiny_model
from sd_lens.runtime.engine import stream
from sd_lens.runtime.tokens import tokenize

TEXTS = ["Hello world, the cat.", "A much longer line of text that pads the batch.", "Hi", "The mat; then it slept!"]


# --------------------------------------------------------------------------------------------
# the reduction as a pure function (hand-built patterns)
# --------------------------------------------------------------------------------------------
def _pattern(lengths: list[int], n_heads: int, w: list[float], seed: int, garbage: float) -> torch.Tensor:
    """A right-padded batch of causal patterns: every query q >= 1 of head h puts ``w[h]`` on key 0
    and the rest on keys 1..q (random split); query 0 puts 1.0 on key 0. Padded queries, padded keys
    and the upper triangle hold ``garbage``."""
    gen = torch.Generator().manual_seed(seed)
    t = max(lengths)
    pat = torch.full((len(lengths), n_heads, t, t), garbage, dtype=torch.float64)
    for b, n in enumerate(lengths):
        for h in range(n_heads):
            pat[b, h, :n, :n] = 0.0
            pat[b, h, 0, 0] = 1.0
            for q in range(1, n):
                rest = torch.rand(q, generator=gen, dtype=torch.float64) + 1e-3
                pat[b, h, q, 1 : q + 1] = (1.0 - w[h]) * rest / rest.sum()
                pat[b, h, q, 0] = w[h]
    return pat


patterns = st.fixed_dictionaries(
    {
        "lengths": st.lists(st.integers(1, 12), min_size=1, max_size=4),
        "w": st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
        "seed": st.integers(0, 2**16),
        "garbage": st.sampled_from([0.0, 0.5, 7.0, -3.0]),
    }
)


@settings(max_examples=60, deadline=None)
@given(patterns)
def test_weight_w_on_key_0_gives_alpha_0_with_query_0_counted(p: dict[str, Any]) -> None:
    # Gu et al.'s code divides the column sums by arange(T, 0, -1): query 0 (all of its attention on
    # key 0) counts, so alpha_0 = (1 + (n - 1) w) / n, not w
    lengths, w = p["lengths"], p["w"]
    pat = _pattern(lengths, len(w), w, p["seed"], p["garbage"])
    alpha = sink_scores(pat, torch.tensor(lengths))
    score = outlier_scores(pat, torch.tensor(lengths))
    assert alpha.dtype == torch.float32 and alpha.shape == (len(lengths), len(w), max(lengths))
    for b, n in enumerate(lengths):
        for h, wh in enumerate(w):
            assert alpha[b, h, 0].item() == pytest.approx((1 + (n - 1) * wh) / n, abs=1e-6)
        # An et al. divide by n for every key: for key 0 that is the head-mean alpha_0
        assert score[b, 0].item() == pytest.approx(float(alpha[b, :, 0].mean()), abs=1e-6)
        # every query spends 1: sum_k alpha_k (n - k) = n per head; An's scores sum to 1
        n_queries = torch.arange(n, 0, -1, dtype=torch.float32)
        torch.testing.assert_close((alpha[b, :, :n] * n_queries).sum(-1), torch.full((len(w),), float(n)))
        assert score[b, :n].sum().item() == pytest.approx(1.0, abs=1e-5)
        assert bool(((alpha[b, :, :n] >= 0) & (alpha[b, :, :n] <= 1 + 1e-6)).all())
        # padded keys get nothing, whatever the padding holds
        assert not bool(alpha[b, :, n:].any()) and not bool(score[b, n:].any())


@settings(max_examples=40, deadline=None)
@given(patterns)
def test_reduction_is_padding_invariant(p: dict[str, Any]) -> None:
    lengths, w = p["lengths"], p["w"]
    pat = _pattern(lengths, len(w), w, p["seed"], p["garbage"])
    alpha = sink_scores(pat, torch.tensor(lengths))
    score = outlier_scores(pat, torch.tensor(lengths))
    for b, n in enumerate(lengths):
        alone = pat[b : b + 1, :, :n, :n]
        torch.testing.assert_close(sink_scores(alone, torch.tensor([n]))[0], alpha[b, :, :n])
        torch.testing.assert_close(outlier_scores(alone, torch.tensor([n]))[0], score[b, :n])


def test_last_key_alpha_is_its_own_self_attention() -> None:
    # the key at n-1 is seen only by query n-1: alpha is that one entry (why min_queries exists)
    pat = _pattern([5], 1, [0.2], seed=0, garbage=0.0)
    assert sink_scores(pat, torch.tensor([5]))[0, 0, 4].item() == pytest.approx(float(pat[0, 0, 4, 4]), abs=1e-6)


def test_bad_pattern_shape_is_rejected() -> None:
    with pytest.raises(InputError, match="query == key"):
        sink_scores(torch.zeros(1, 2, 3, 4), torch.tensor([3]))
    with pytest.raises(InputError, match="query == key"):
        outlier_scores(torch.zeros(2, 3, 3), torch.tensor([3]))


# --------------------------------------------------------------------------------------------
# tiny models of every family
# --------------------------------------------------------------------------------------------
def test_streamed_scores_match_cached_patterns(tiny, unchanged) -> None:
    with unchanged(tiny):
        sinks = attention_sinks(tiny, TEXTS, batch_size=3, high_norm_rows=[1, 5])
    n_layers, n_heads = int(tiny.cfg.n_layers), int(tiny.cfg.n_heads)
    assert sinks.score.shape == (n_layers, n_heads) and sinks.blocks == list(range(n_layers))
    seqs = tokenize(tiny, TEXTS).sequences
    row = 0
    for seq, ids in enumerate(seqs):
        _, cache = tiny.run_with_cache(ids[None])
        n = len(ids)
        for layer in range(n_layers):
            pat = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()  # [H, Q, K]
            ref = torch.stack([pat[:, k:, k].sum(-1) / (n - k) for k in range(n)], dim=-1)  # Gu et al.'s alpha_k
            torch.testing.assert_close(sinks.key_alpha[row : row + n, layer].T.double(), ref, rtol=1e-4, atol=1e-5)
            an = pat.mean(0).sum(0) / n  # An et al.: head mean, summed over queries, over seq_len
            torch.testing.assert_close(sinks.outlier_score[row : row + n, layer].double(), an, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sinks.initial_alpha[seq, layer].double(), ref[:, 0], rtol=1e-4, atol=1e-5)
        row += n
    assert row == len(sinks.positions)
    assert sinks.high_norm_alpha is not None
    torch.testing.assert_close(sinks.high_norm_alpha, sinks.key_alpha[[1, 5]])


def test_padding_invariance_batch_size_1_and_16(tiny) -> None:
    one = attention_sinks(tiny, TEXTS, batch_size=1)
    many = attention_sinks(tiny, TEXTS, batch_size=16)
    torch.testing.assert_close(one.key_alpha, many.key_alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.outlier_score, many.outlier_score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.score, many.score, rtol=1e-5, atol=1e-6)
    assert one.sink_rate == pytest.approx(many.sink_rate)
    assert one.positions.tolist() == many.positions.tolist()


def test_aggregates_follow_their_definitions(tiny) -> None:
    sinks = attention_sinks(tiny, TEXTS, epsilon=0.25, top_k=3)
    hot = sinks.initial_alpha > 0.25
    torch.testing.assert_close(sinks.score, sinks.initial_alpha.mean(0))
    torch.testing.assert_close(sinks.sink_frequency, hot.float().mean(0))
    torch.testing.assert_close(sinks.block_sink_rate, hot.float().mean(dim=(0, 2)))
    assert sinks.sink_rate == pytest.approx(float(hot.float().mean()))
    assert torch.equal(sinks.sinks, sinks.score > 0.25)
    assert [(h.block, h.head) for h in sinks.top_heads] == [
        (int(j) // sinks.n_heads, int(j) % sinks.n_heads) for j in sinks.score.flatten().argsort(descending=True)[:3]
    ]
    # every text's alpha_0 >= 1/n: query 0 is counted
    lengths = torch.bincount(sinks.seq_index)
    assert bool((sinks.initial_alpha >= (1 / lengths)[:, None, None] - 1e-6).all())
    for key in sinks.sink_keys:
        assert key.position > 0 and sinks.key_queries[key.row] >= sinks.min_queries
        assert key.alpha > 0.25 and key.alpha == pytest.approx(float(sinks.key_alpha[key.row].max()))
    json.dumps(sinks.to_dict())


def test_layers_subset_and_prefix(tiny) -> None:
    full = attention_sinks(tiny, TEXTS)
    last = int(tiny.cfg.n_layers) - 1
    part = attention_sinks(tiny, TEXTS, layers=[last])
    assert part.blocks == [last] and part.score.shape == (1, full.n_heads)
    torch.testing.assert_close(part.key_alpha[:, 0], full.key_alpha[:, last])
    first = attention_sinks(tiny, TEXTS, layers=1)
    assert first.blocks == [0]
    torch.testing.assert_close(first.key_alpha[:, 0], full.key_alpha[:, 0])


def test_planted_sink_head_is_found_and_min_queries_guards_the_tail() -> None:
    model = tiny_model("llama", seed=1, n_layers=2)
    seqs = tokenize(model, TEXTS).sequences

    def plant(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        """Head 1 of block 1: every later query sends 0.9 of its attention to key 0."""
        new = pattern.clone()
        new[:, 1, 1:, :] *= 0.1
        new[:, 1, 1:, 0] += 0.9
        return new

    name = "blocks.1.attn.hook_pattern"
    seen = 0
    for batch, out in stream(model, seqs, {name: _reduce}, batch_size=4, fwd_hooks=[(name, plant)]):
        alpha, _ = out[name]
        for r, n in enumerate(batch.lengths.tolist()):
            # query 0 gives 1.0, queries 1..n-1 give 0.9 + 0.1 x their own weight on key 0
            assert alpha[r, 1, 0].item() >= (1 + 0.9 * (n - 1)) / n - 1e-5
            seen += 1
    assert seen == len(TEXTS)
    # min_queries: a key seen by fewer queries is never reported
    loose = attention_sinks(model, TEXTS, min_queries=1)
    strict = attention_sinks(model, TEXTS, min_queries=1000)
    assert strict.sink_keys == [] and int(strict.key_sink_counts().sum()) == 0
    # the last key, seen by one query, has alpha = its self-attention; some exceed 0.3
    assert any(k.position == len(seqs[k.seq]) - 1 for k in loose.sink_keys)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_queries": 0}, "min_queries"),
        ({"top_k": -1}, "top_k"),
        ({"outlier_fraction": 0.0}, "outlier_fraction"),
        ({"layers": 0}, "layers"),
        ({"layers": [99]}, "blocks"),
        ({"layers": ["x"]}, "layers"),
        ({"high_norm_rows": [10_000]}, "high_norm_rows"),
        ({"high_norm_rows": [-1]}, "high_norm_rows"),
    ],
)
def test_bad_arguments_raise_before_any_forward(tiny, unchanged, kwargs: dict[str, Any], match: str) -> None:
    with unchanged(tiny), pytest.raises(InputError, match=match):
        attention_sinks(tiny, TEXTS, **kwargs)


@pytest.mark.parametrize("bad", [[], [""], "one string"])
def test_bad_texts_raise(tiny, bad: Any) -> None:
    with pytest.raises(InputError):
        attention_sinks(tiny, bad)


def test_key_sink_counts_rejects_unmeasured_blocks(tiny) -> None:
    sinks = attention_sinks(tiny, TEXTS, layers=[0])
    with pytest.raises(InputError, match="not measured"):
        sinks.key_sink_counts([1])


def test_sink_head_view_feeds_the_attention_view(tiny, unchanged) -> None:
    from sd_lens.report.views import attention_view

    last = int(tiny.cfg.n_layers) - 1
    with unchanged(tiny):
        hp = sink_head_view(tiny, TEXTS[1], last, 1)
    ids = tokenize(tiny, [TEXTS[1]]).sequences[0]
    _, cache = tiny.run_with_cache(ids[None])
    ref = cache[f"blocks.{last}.attn.hook_pattern"][0, 1:2]
    torch.testing.assert_close(hp.pattern, ref.float())
    assert hp.pattern.shape == (1, len(ids), len(ids)) and len(hp.tokens) == len(ids)
    torch.testing.assert_close(hp.alpha, sink_scores(ref[None].float(), torch.tensor([len(ids)]))[0, 0])
    view = attention_view(**hp.view_kwargs())
    assert view.props["attentionHeadNames"] == [f"L{last}H1"]
    with pytest.raises(InputError, match="head"):
        sink_head_view(tiny, TEXTS[0], 0, int(tiny.cfg.n_heads))
    with pytest.raises(InputError, match="block"):
        sink_head_view(tiny, TEXTS[0], int(tiny.cfg.n_layers), 0)


# --------------------------------------------------------------------------------------------
# real models on the default corpus
# --------------------------------------------------------------------------------------------
_real: dict[str, tuple[AttentionSinks, Any]] = {}


def _measure(model: Any, key: str) -> tuple[AttentionSinks, Any]:
    """(sinks, defect report) of the default corpus, once per model; the noninitial carriers of the
    defects are passed as ``high_norm_rows``."""
    if key not in _real:
        texts = default_corpus()
        probe = probe_norms(model, texts)
        report = find_defects(model, probe)
        rows = sorted({e.row for d in report.defects for e in d.episodes if e.position > 0})
        _real[key] = (attention_sinks(model, texts, high_norm_rows=rows), report)
    return _real[key]


def _carrier_mask(sinks: AttentionSinks) -> torch.Tensor:
    mask = torch.zeros(len(sinks.positions), dtype=torch.bool)
    assert sinks.high_norm_rows is not None
    mask[sinks.high_norm_rows] = True
    return mask


def test_smollm2_sinks_follow_the_initial_token_defects(smollm2) -> None:
    sinks, report = _measure(smollm2, "smollm2")
    # measured: sink rate 0.815 (heads with mean alpha_0 > 0.3: 226 of 270 = 0.837)
    assert 0.78 <= sinks.sink_rate <= 0.85
    assert 215 <= int(sinks.sinks.sum()) <= 235
    rate = sinks.block_sink_rate
    # measured block rates: 0.07, 0.00, 0.35, then 0.86-0.91 in blocks 3-9, 0.08 and 0.00 in 10-11, then 0.87-1.0
    initial = [d for d in report.defects if d.initial_token]
    assert sorted(d.explosion_layer for d in initial) == [2, 11]
    d0, d1 = sorted(initial, key=lambda d: d.explosion_layer)
    # sinks start the block after the first explosion (block 3 reads block 2's exploded state)
    assert sinks.first_sink_block() == d0.explosion_layer + 1 == 3
    # they vanish once that defect has decayed, and come back the block after the second explosion
    assert float(rate[d1.explosion_layer]) <= 0.05 and float(rate[d1.explosion_layer + 1]) >= 0.95
    # a block sinks (rate >= 0.5) exactly when an initial-token defect is in its input (resid_post of
    # the block before); uncovered blocks have rate <= 0.1
    covered = {b for b in range(1, len(rate)) if any(d.first_layer <= b - 1 <= d.last_layer for d in initial)}
    assert set(sinks.sink_blocks(0.5)) <= covered
    assert covered - set(sinks.sink_blocks(0.5)) == {d0.first_layer + 1}  # block 2, the onset: rate 0.35
    assert all(float(rate[b]) <= 0.1 for b in range(len(rate)) if b not in covered)
    # measured top head: block 18 head 8, mean alpha_0 0.998 in every text
    assert sinks.top_heads[0].score >= 0.99 and sinks.top_heads[0].frequency == 1.0


def test_smollm2_noninitial_sinks_are_the_high_norm_tokens(smollm2) -> None:
    sinks, report = _measure(smollm2, "smollm2")
    carriers = _carrier_mask(sinks)
    # measured: 58 noninitial carrier rows (' the', ' ', ...), 37 of them are sink keys
    assert 50 <= int(carriers.sum()) <= 66
    all_counts = sinks.key_sink_counts()
    assert int(((all_counts > 0) & carriers).sum()) >= 0.55 * int(carriers.sum())
    # in the blocks where the initial token sinks, keys that many heads sink on are the carriers:
    # measured 27 of 29 keys with >= 5 (block, head) pairs, 27 of 27 with >= 10
    counts = sinks.key_sink_counts(sinks.sink_blocks(0.5))
    strong = counts >= 5
    assert int(strong.sum()) >= 20 and int((strong & carriers).sum()) >= 0.85 * int(strong.sum())
    assert bool(carriers[counts >= 10].all())
    # the other sink keys ('.', ',', ...) sit in blocks 0-2 and 10-11, where the initial token does not sink
    others = [k for k in sinks.sink_keys if not carriers[k.row]]
    off = set(range(len(sinks.blocks))) - set(sinks.sink_blocks(0.5))
    in_off = sum(b in off for k in others for b in k.blocks)
    assert in_off >= 0.75 * sum(len(k.blocks) for k in others)  # measured: 182 of 225 (0.81), 104 keys
    # carriers receive about twice the attention of the other tokens while the first defect is on
    # (measured over blocks 3-9: largest head's alpha 0.41-0.49 vs 0.05-0.09)
    eligible = (sinks.positions > 0) & (sinks.key_queries >= sinks.min_queries)
    best = sinks.key_alpha.amax(dim=2)
    for b in range(3, 10):
        assert float(best[carriers & eligible, b].mean()) >= 3 * float(best[~carriers & eligible, b].mean())
    json.dumps(sinks.to_dict())


def test_gemma3_sinks_from_block_0_and_not_on_its_noninitial_defect_tokens(gemma3) -> None:
    sinks, report = _measure(gemma3, "gemma3")
    # measured: sink rate 0.952; 70 of 72 heads have mean alpha_0 > 0.3; every block >= 0.76
    assert 0.92 <= sinks.sink_rate <= 0.98
    assert int(sinks.sinks.sum()) >= 66
    assert float(sinks.block_sink_rate.min()) >= 0.7
    # sinks are already there in block 0, before the initial token is high-norm (its defect builds up
    # over blocks 0-15, explosion block 5), and stay after it (blocks 16-17)
    initial = [d for d in report.defects if d.initial_token]
    assert len(initial) == 1 and initial[0].explosion_layer == 5
    assert sinks.first_sink_block() == 0 and float(sinks.block_sink_rate[0]) >= 0.9
    assert all(float(sinks.block_sink_rate[b]) >= 0.9 for b in range(initial[0].last_layer + 1, len(sinks.blocks)))
    # measured top head: block 5 (the explosion block) head 1, mean alpha_0 0.968
    assert sinks.top_heads[0].block == initial[0].explosion_layer and sinks.top_heads[0].score >= 0.95
    # the noninitial carriers (',', ' and') get no more attention than other tokens: measured 0 of 29
    # are sink keys; mean largest-head alpha 0.074 vs 0.081 for the others
    carriers = _carrier_mask(sinks)
    assert 20 <= int(carriers.sum()) <= 40
    assert int((sinks.key_sink_counts() > 0)[carriers].sum()) == 0
    eligible = (sinks.positions > 0) & (sinks.key_queries >= sinks.min_queries)
    best = sinks.key_alpha.amax(dim=2)
    assert float(best[carriers & eligible].mean()) <= 1.1 * float(best[~carriers & eligible].mean())
    # measured: only 10 noninitial sink keys in the corpus, none with more than 2 sinking heads
    assert len(sinks.sink_keys) <= 15 and max(k.n_heads for k in sinks.sink_keys) <= 2


def test_real_model_padding_invariance(smollm2) -> None:
    texts = default_corpus()[:6]
    one = attention_sinks(smollm2, texts, batch_size=1, layers=4)
    many = attention_sinks(smollm2, texts, batch_size=16, layers=4)
    torch.testing.assert_close(one.key_alpha, many.key_alpha, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.score, many.score, rtol=1e-4, atol=1e-5)
