"""Life cycle of each defect (emergence, spread, disappearance), composed from the existing analyses."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import token_embedding
from sd_lens.analyses.activation_outliers import activation_outliers, defect_channels
from sd_lens.analyses.attention_sinks import attention_sinks
from sd_lens.analyses.attribution import component_attribution
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.life_cycle import ffn_output, life_cycle, neuron_contributions
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.weight_outliers import weight_outliers
from sd_lens.errors import InputError
from sd_lens.models.tiny import FAMILIES, tiny_model
from sd_lens.models.view import model_view
from sd_lens.runtime.engine import stream
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.reducers import last_token
from sd_lens.runtime.tokens import tokenize

TEXTS = ["the cat sat on the mat", "the dog ran far away", "the hello there world", "the one two three four"]


ALPHABET = "abcdefghij klmnop,.!"


# ------------------------------------------------------------------------------------------------
# the neuron split is exact, on every family
# ------------------------------------------------------------------------------------------------
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(ALPHABET, min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=3),
    channel=st.integers(0, 63),
)
def test_neuron_contributions_add_up_to_the_ffn_output(tiny, texts, channel):
    """sum_i f_c h_i W_out[i, c] + f_c b_out[c] is the FFN's value in channel c: before the post-norm (the
    MLP's own output hook) and after it (hook_mlp_out, what is added to the residual)."""
    seqs = tokenize(tiny, texts, max_tokens_per_text=None).sequences
    n_layers = int(tiny.cfg.n_layers)
    kinds = {"h": ("post", "mlp"), "y": ("hook_out", "mlp"), "out": ("mlp_out", None)}
    # the MLP's own output hook is a bridge's; a HookedTransformer's hook_mlp_out is the same where there is
    # no post-norm, and before Gemma's post-norm it has none (y then checked through factor * y only)
    post_norms = model_view(tiny).block(0).mlp_post_scale is not None
    y_name = "blocks.{}.mlp.hook_out" if "blocks.0.mlp.hook_out" in tiny.hook_dict else (
        None if post_norms else "blocks.{}.hook_mlp_out")
    names = {
        (k, b): (y_name.format(b) if k == "y" else act_name(kind, b, sub))
        for k, (kind, sub) in kinds.items() for b in range(n_layers) if k != "y" or y_name is not None
    }
    got: dict[tuple[str, int], list[torch.Tensor]] = {key: [] for key in names}
    for _, values in stream(tiny, seqs, {n: last_token for n in names.values()}):
        for key, n in names.items():
            got[key].append(values[n].double())
    view = model_view(tiny)
    for b in range(n_layers):
        h, out_hook = (torch.cat(got[(k, b)]) for k in ("h", "out"))
        bv = view.block(b)
        y, factor, bias = ffn_output(bv, h)
        y_hook = torch.cat(got[("y", b)]) if y_name is not None else y
        scale = float(out_hook.norm(dim=-1).max()) + float(y_hook.norm(dim=-1).max()) + 1
        assert torch.allclose(y, y_hook, atol=1e-5 * scale)  # the MLP's output before any post-norm
        assert torch.allclose(factor * y, out_hook, atol=1e-5 * scale)  # what it adds to the residual
        assert (bv.mlp_post_scale is None) == bool(torch.all(factor == 1))
        contrib = neuron_contributions(bv, h, channel)
        assert contrib.shape == (len(seqs), int(tiny.cfg.d_mlp))
        # exactly (float64 algebra): the rows and the bias make up the channel's value
        total = contrib.sum(1) + bias[:, channel]
        assert torch.allclose(total, (factor * y)[:, channel], rtol=1e-9, atol=1e-9 * scale)
        assert torch.allclose(contrib.sum(1) / factor[:, channel] + (0 if bv.b_out is None else float(bv.b_out[channel])),
                              y[:, channel], rtol=1e-9, atol=1e-9 * scale)


# ------------------------------------------------------------------------------------------------
# a planted initial-token defect, end to end, on every family
# ------------------------------------------------------------------------------------------------
_PLANT = {"llama": 40.0, "gemma3": 400.0, "gpt2": 40.0, "neox": 40.0}  # gemma3 scales its own embedding down


_planted: dict[str, Any] = {}


def _planted_inputs(family: str) -> Any:
    """A private 4-block tiny model whose first token's embedding is scaled up (one initial-token defect),
    and every input of the life cycle on four texts that start with that token."""
    if family not in _planted:
        model = tiny_model(family, seed=1, n_layers=4)
        first = int(tokenize(model, TEXTS).sequences[0][0])
        with torch.no_grad():
            token_embedding(model)[first] *= _PLANT[family]
        probe = probe_norms(model, TEXTS)
        report = find_defects(model, probe)
        inputs = dict(
            report=report, probe=probe,
            outliers=activation_outliers(model, TEXTS, absolute=None, relative=10.0),
            weights=weight_outliers(model), sinks=attention_sinks(model, TEXTS),
            attribution=component_attribution(model, report, probe),
        )
        _planted[family] = (model, inputs)
    return _planted[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_defect_life_cycle_is_aligned_with_its_inputs(family, unchanged):
    model, inp = _planted_inputs(family)
    report, att = inp["report"], inp["attribution"]
    assert len(report) == 1 and report[0].initial_token  # the planted defect
    d_mlp, n_layers = int(model.cfg.d_mlp), int(model.cfg.n_layers)
    with unchanged(model):
        lc = life_cycle(model, **inp, top_k=d_mlp)  # every row: their sum must close
    assert len(lc) == 1 and lc.closure_error < 1e-5
    (d,), (a,), (x,) = list(report), list(att), list(lc)
    assert (x.label, x.explosion_layer, x.decay_layers) == (d.label, d.explosion_layer, d.decay_layers)
    assert x.explosion_set == a.explosion_set and [s.block for s in x.emergence] == a.explosion_set
    assert x.peak_layer == a.peak_layer
    # channels: the direction's largest share first, none below min_share but the first
    assert x.channel == defect_channels(d.direction, 1)[0][0]
    assert all(c.share >= lc.min_share for c in x.channels[1:])
    assert all(d.first_layer <= b <= d.last_layer for c in x.channels for b in c.massive_blocks)
    assert [b for _, lo, hi in x.hand_over for b in range(lo, hi + 1)] == list(range(d.first_layer, d.last_layer + 1))
    # cancelling blocks: after the peak, up to the block after the defect's last, each removing
    window = range(a.peak_layer + 1, min(d.last_layer + 1, n_layers - 1) + 1)
    assert all(b in window and float(a.total[b]) < 0 for b in x.cancelling_set)
    assert [s.block for s in x.disappearance] == x.cancelling_set
    assert x.spread.blocks == list(range(d.first_layer, min(d.last_layer + 1, n_layers - 1) + 1))
    assert x.spread.n_heads == sum(x.spread.initial) + sum(x.spread.noninitial)
    for step, adding in [(s, True) for s in x.emergence] + [(s, False) for s in x.disappearance]:
        assert step.attn == pytest.approx(float(a.attn[step.block])) and step.ffn == pytest.approx(float(a.ffn[step.block]))
        assert step.channel in [c.channel for c in x.channels]
        assert len(step.neurons) == d_mlp and len({n.neuron for n in step.neurons}) == d_mlp
        # the rows and the bias make up the FFN's value in the channel, exactly
        total = sum(n.contribution for n in step.neurons) + step.bias
        assert total == pytest.approx(step.ffn_channel, rel=1e-6, abs=1e-9)
        # one carrier (the initial token): the post-norm factor times the raw value is the added value
        assert step.post_factor * step.ffn_channel_pre_norm == pytest.approx(step.ffn_channel, rel=1e-6, abs=1e-9)
        sign = 1.0 if float(a.direction[step.channel]) >= 0 else -1.0
        signed = [sign * n.contribution for n in step.neurons]
        assert signed == sorted(signed, reverse=adding)
    data = json.loads(json.dumps(lc.to_dict()))
    assert data["defects"][0]["explosion_set"] == a.explosion_set and data["defects"][0]["summary"] == x.summary()
    assert x.summary().startswith(f"{x.label} (the initial token")


def test_planted_llama_defect_in_words():
    """Measured on the planted tiny Llama: the 40x first token lives in channel 21; attention builds it at
    blocks 0-2 and block 3's attention removes part of it; no head sinks on it."""
    model, inp = _planted_inputs("llama")
    (x,) = list(life_cycle(model, **inp))
    assert x.channel == 21 and x.explosion_set == [0, 1, 2] and x.cancelling_set == [3]
    assert all(s.sublayer == "attn" for s in x.emergence) and x.cancelled_by == "attn"
    assert "from attention" in x.summary() and "cancelled at block 3" in x.summary()


def test_bad_arguments_are_clear_errors_before_any_forward(unchanged):
    model, inp = _planted_inputs("llama")
    with unchanged(model):
        for kwargs, match in [
            ({"top_k": 0}, "top_k"), ({"min_share": 1.5}, "min_share"), ({"fraction": 0.0}, "fraction"),
            ({"batch_size": True}, "batch_size"), ({"max_channels": 0}, "max_channels"),
        ]:
            with pytest.raises(InputError, match=match):
                life_cycle(model, **inp, **kwargs)
        other = attention_sinks(model, TEXTS[:2])
        with pytest.raises(InputError, match="another corpus"):
            life_cycle(model, **{**inp, "sinks": other})
        empty = component_attribution(model, inp["report"], inp["probe"])
        with pytest.raises(InputError, match="attribution"):
            life_cycle(model, **{**inp, "attribution": type(empty)(**{**empty.__dict__, "defects": []})})
