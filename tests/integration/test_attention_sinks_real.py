"""Attention sinks (Gu et al., ICLR 2025) and attention outliers (An et al., ICLR 2025).

The reduction is tested as a pure function of a hand-built pattern (hypothesis), the streamed
analysis against patterns from ``run_with_cache`` on tiny models of every family, and the measured
sink figures of SmolLM2 and Gemma-3 on the default corpus against their defects.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from sd_lens.analyses.attention_sinks import (
    AttentionSinks,
    attention_sinks,
)
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.corpus import default_corpus

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
