"""The residual identity: it holds on a tiny model of every family, fails with a message naming the block and
the hooks when a hook is edited, and its arithmetic is the attribution's closure check."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.analyses.residual_identity import _diagnose, closure, residual_identity
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.runtime import act_name

TEXTS = ["the cat sat on the mat.", "a dog ran far away", "hello, there world\n", "one two three four"]


def test_holds_on_every_family(tiny, unchanged):
    with unchanged(tiny):
        r = residual_identity(tiny, TEXTS, batch_size=3)  # two batches, one padded
    assert r.holds and r.failing == [] and r.diagnosis == {}
    assert r.max_error < 1e-6  # measured: 1.4e-8 .. 4.6e-8 (float32)
    assert r.rtol == pytest.approx(4 * torch.finfo(torch.float32).eps)
    assert r.parallel == (act_name("resid_mid", 0) not in tiny.hook_dict)  # GPT-NeoX: parallel blocks
    r.require()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["holds"] is True and len(d["error"]) == tiny.cfg.n_layers
    assert "at every block" in r.message()


def test_an_edited_hook_breaks_it_with_a_clear_message(tiny, unchanged):
    """A hook that moves the residual between the named hooks (here: +10 on every entry of block 0's resid_mid,
    resid_post for parallel blocks) makes the hooks stop adding up; the message says where and what carries what."""
    r0 = residual_identity(tiny, TEXTS)
    site = "resid_post" if r0.parallel else "resid_mid"

    def edit(act, hook):
        return act + 10.0

    with tiny.hooks(fwd_hooks=[(act_name(site, 0), edit)]), unchanged(tiny, check_output=False):
        r = residual_identity(tiny, TEXTS)
    assert not r.holds and r.failing == [0] and list(r.diagnosis) == [0]
    msg = r.message()
    assert "fails at block(s) 0" in msg and "hook_attn_out" in msg and "block 0:" in msg
    assert "no hook of the block" in r.diagnosis[0]
    with pytest.raises(UnsupportedArchitectureError, match="fails at block"):
        r.require()


@pytest.mark.bridge_only(reason="names the bridge's hooks (Gemma-3's ln1_post.hook_out, ...) that carry each value")
def test_the_diagnosis_names_the_hooks_that_carry_each_value(tiny):
    """Gemma-3's sandwich norms: the attention's added value is the post-attention norm's output (hook_attn_out
    is that), not the attention's own output before the norm (attn.hook_out); elsewhere hook_attn_out carries it."""
    parallel = act_name("resid_mid", 0) not in tiny.hook_dict
    text = _diagnose(tiny, tiny.to_tokens(TEXTS[0])[0], 0, parallel, 1e-6)
    if parallel:
        assert text.startswith("the attention and FFN together")
        return
    attn_part = text.split("; the FFN")[0]
    carried = attn_part.split("is carried by ")[1].split(";")[0].split(", ")
    assert "blocks.0.hook_attn_out" in carried
    if tiny.cfg.original_architecture == "Gemma3ForCausalLM":
        assert "blocks.0.ln1_post.hook_out" in carried and "blocks.0.attn.hook_out" not in carried
    assert float(attn_part.split("misses it by ")[1].split(" ")[0]) < 1e-5


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 1e4))
def test_closure_is_exact_on_a_true_sum_and_scale_free(seed, size):
    g = torch.Generator().manual_seed(seed)
    pre, attn, mlp = (torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * size for _ in range(3))
    mid, post = pre + attn, pre + attn + mlp
    c = closure(pre, attn, mlp, post, mid, eps=torch.finfo(torch.float32).eps)
    assert c.error() <= 1e-12 and c.holds(0.0)
    bad = closure(pre, attn, mlp, post + 0.5 * post.norm(dim=-1, keepdim=True) / 4, mid, eps=1e-7)
    assert bad.error() > 0.1 and not bad.holds(1e-3)
    empty = closure(*(torch.zeros(0, 3, 4, dtype=torch.float64) for _ in range(5)), eps=1e-7)
    assert empty.error() == 0.0 and empty.excess() == 0.0


def test_bad_arguments():
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama")
    for kwargs in ({"rtol": -1.0}, {"rtol": float("nan")}, {"batch_size": 0}):
        with pytest.raises(InputError):
            residual_identity(model, TEXTS, **kwargs)


def test_half_precision_tolerance_comes_from_the_dtype():
    """bfloat16: the errors are ~1e-3 (measured 9.5e-4 on this model), within the rounding of the additions plus
    4 eps of bfloat16, and far above what float32 allows (4.8e-7)."""
    import warnings

    from sd_lens.models.tiny import tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model("llama").to(torch.bfloat16)
    r = residual_identity(model, TEXTS)
    assert r.dtype == "bfloat16" and r.rtol == pytest.approx(4 * torch.finfo(torch.bfloat16).eps)
    assert r.holds and 100 * 4 * torch.finfo(torch.float32).eps < r.max_error < 1e-2
