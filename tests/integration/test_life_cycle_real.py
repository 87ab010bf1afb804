"""Life cycle of each defect (emergence, spread, disappearance), composed from the existing analyses."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from sd_lens.analyses.activation_outliers import activation_outliers
from sd_lens.analyses.attention_sinks import attention_sinks
from sd_lens.analyses.attribution import component_attribution
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.life_cycle import life_cycle
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.weight_outliers import weight_outliers
from sd_lens.corpus import default_corpus

# ------------------------------------------------------------------------------------------------
# real models (default corpus; numbers measured)
# ------------------------------------------------------------------------------------------------
_real: dict[str, Any] = {}


def _real_life_cycle(model: Any, key: str) -> Any:
    if key not in _real:
        texts = default_corpus()
        probe = probe_norms(model, texts)
        report = find_defects(model, probe)
        hr = torch.nonzero((probe.ratio("resid_post") > report.threshold).any(dim=1)).flatten()
        _real[key] = life_cycle(
            model, report, probe, activation_outliers(model, texts), weight_outliers(model),
            attention_sinks(model, texts, high_norm_rows=hr), component_attribution(model, report, probe),
        )
    return _real[key]


def test_smollm2_life_cycle(smollm2):
    lc = _real_life_cycle(smollm2, "smollm2")
    assert lc.closure_error < 1e-5  # measured: 3.5e-7
    d0, d1 = lc
    # both defects ride channel 507; only D1 is a massive activation there (blocks 11-28)
    assert d0.hand_over == [(507, 1, 8)] and d1.hand_over == [(507, 11, 29)]
    assert d0.channels[0].massive_blocks == [] and d0.channels[0].owner == "D1"
    assert d1.channels[0].massive_blocks == list(range(11, 29))
    # D1 emerges at block 11 from the FFN: rows 1229 (72 %) and 1487 (27 %), both peaked W_out rows fed by
    # massive down-projection inputs (measured h = 3065 and 1119)
    (e,) = d1.emergence
    assert (e.block, e.sublayer, e.channel) == (11, "ffn", 507)
    assert [n.neuron for n in e.neurons[:2]] == [1229, 1487]
    assert [n.share for n in e.neurons[:2]] == pytest.approx([0.724, 0.273], abs=0.01)
    assert all(n.weight_outlier and n.massive_input for n in e.neurons[:2])
    assert e.pre_ffn_masked  # the folded pre-FFN norm leaves channel 507 out of the FFN's input (blocks 11-26)
    assert d1.masked_before_ffn == {507: list(range(11, 27))}
    # D0 emerges at blocks 1-2 from the FFN: row 83 at block 1 (69 %), rows 90 and 430 at block 2 (54 %, 42 %)
    assert d0.explosion_set == [1, 2] and all(s.sublayer == "ffn" for s in d0.emergence)
    assert d0.emergence[0].neurons[0].neuron == 83 and [n.neuron for n in d0.emergence[1].neurons[:2]] == [90, 430]
    # spread: heads sink on the initial token from the block after the defect's first one (measured: 3 then
    # 9 of 9 heads per block); D0's ' the' / ' ' carriers are sunk on too
    assert d0.spread.first_block == 2 and d0.spread.initial[:3] == [0, 3, 9]
    assert d1.spread.first_block == 12 and d1.spread.initial[:2] == [0, 9]
    assert sum(d0.spread.noninitial) == 52 and sum(d0.spread.initial) == 66  # measured
    # disappearance: FFN, at the decay blocks; D1 mostly at block 28 by row 678 (96 %), D0 at block 9 by row 200
    assert d1.cancelling_set == [27, 28, 29] and set(d1.decay_layers) <= set(d1.cancelling_set)
    assert d1.cancelled_by == "ffn" and d1.strongest_cancel is not None and d1.strongest_cancel.block == 28
    assert d1.strongest_cancel.neurons[0].neuron == 678 and d1.strongest_cancel.neurons[0].share > 0.95
    assert d0.cancelling_set == [8, 9] == d0.decay_layers and d0.cancelled_by == "ffn"
    assert d0.strongest_cancel is not None and d0.strongest_cancel.neurons[0].neuron == 200
    json.dumps(lc.to_dict())


def test_gemma3_life_cycle(gemma3):
    lc = _real_life_cycle(gemma3, "gemma3")
    assert lc.closure_error < 1e-5  # measured: 3.9e-7
    (d,) = lc
    # channel 400 (masked before the FFN, blocks 0-6) hands over to 163 at block 3
    assert d.hand_over == [(400, 0, 2), (163, 3, 15)]
    assert {c.channel: c.massive_blocks for c in d.channels} == {163: list(range(3, 15)), 400: list(range(0, 7))}
    assert d.masked_before_ffn[400] == list(range(0, 7))
    # emergence: blocks 3-8 and 11, all FFN, in channel 163; at each of 3-8 one row writes 89-99 % of it
    assert d.explosion_set == [3, 4, 5, 6, 7, 8, 11] and all(s.sublayer == "ffn" and s.channel == 163 for s in d.emergence)
    top = {s.block: s.neurons[0] for s in d.emergence}
    assert {b: n.neuron for b, n in top.items()} == {3: 1414, 4: 84, 5: 584, 6: 1824, 7: 1455, 8: 188, 11: 662}
    assert all(top[b].share > 0.88 and top[b].weight_outlier for b in range(3, 9))
    # ... through a post-FFN norm gain of 585-789 (the raw FFN value in channel 163 is 0.07-1.8)
    assert all(s.post_ffn_amplified for s in d.emergence[:6])
    assert [round(s.post_ffn_gain or 0) for s in d.emergence[:6]] == [585, 609, 741, 789, 689, 709]
    assert all(abs(s.ffn_channel_pre_norm) < 2 for s in d.emergence)
    # spread: 66 of the 68 heads of blocks 0-16 sink on the initial token
    assert d.spread.n_heads == 66 and d.spread.first_block == 0
    # disappearance at the decay block 16, by the FFN: row 287 writes 99 % of the cancelling value
    assert d.decay_layers == [16] and d.cancelling_set == [15, 16] and d.cancelled_by == "ffn"
    s = d.strongest_cancel
    assert s is not None and s.block == 16 and s.channel == 163
    assert s.neurons[0].neuron == 287 and s.neurons[0].share > 0.98 and s.ffn_channel < -19_000  # measured -19 870
    json.dumps(lc.to_dict())
