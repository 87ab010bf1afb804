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
    _reduce,
    attention_sinks,
    outlier_scores,
    sink_head_view,
    sink_scores,
)
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
