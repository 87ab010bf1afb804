"""The model view reproduces each block's own computation on the real models (tiny ones: tests/unit/test_model_view.py)."""
from __future__ import annotations

import pytest
import torch

from reproduction import reproduction_errors
from sd_lens.models.view import model_view

# ----------------------------------------------------------------------------- real models
HOOKS = [
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "ln1.hook_normalized",
    "ln2.hook_normalized",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_pattern",
]


REAL_TEXT = "Paris is the capital of France. The river Seine flows through it, and"


# Measured (float32, CPU): attention <= 1e-6, FFN 0 (same kernels). A 1e-4 bound still catches any
# missing norm scale, wrong GQA grouping or (1+w) slip, which give errors of order 1.
REAL_TOL = 1e-4


@pytest.fixture(params=["smollm2", "gemma3"])
def real(request):
    return request.getfixturevalue(request.param)


@pytest.mark.real_model
def test_real_model_tokenizes_and_has_the_hooks(real):
    tokens = real.to_tokens(REAL_TEXT)
    strs = real.to_str_tokens(REAL_TEXT)
    assert tokens.ndim == 2 and tokens.shape[0] == 1 and 10 < tokens.shape[1] < 40
    assert len(strs) == tokens.shape[1]
    assert tokens[0, 0].item() == real.tokenizer.bos_token_id  # the initial token is BOS
    assert "".join(strs[1:]) == REAL_TEXT
    names = set(real.hook_dict)
    missing = [f"blocks.{l}.{h}" for l in range(real.cfg.n_layers) for h in HOOKS if f"blocks.{l}.{h}" not in names]
    assert not missing, missing[:10]


@pytest.mark.real_model
def test_real_model_hooks_have_the_right_shapes(real):
    last = real.cfg.n_layers - 1
    names = [f"blocks.{l}.{h}" for l in (0, last) for h in HOOKS]
    with torch.no_grad():
        _, cache = real.run_with_cache(REAL_TEXT, names_filter=names)
    seq = real.to_tokens(REAL_TEXT).shape[1]
    for name in names:
        shape = tuple(cache[name].shape)
        if name.endswith("hook_pattern"):
            assert shape == (1, real.cfg.n_heads, seq, seq), (name, shape)
            pattern = cache[name][0]
            torch.testing.assert_close(pattern.sum(-1), torch.ones(real.cfg.n_heads, seq))
            assert torch.all(pattern[:, 0, 0] > 0.999)  # the first token attends only to itself
        else:
            assert shape == (1, seq, real.cfg.d_model), (name, shape)


@pytest.mark.real_model
def test_real_model_view_reproduces_every_block(real):
    errors = reproduction_errors(real, REAL_TEXT)
    print(f"\n{real.cfg.model_name}: block: first-token attention / FFN relative error")
    for layer, (a, f) in enumerate(errors):
        print(f"  {layer:2d}: {a:.2e} / {f:.2e}")
    assert len(errors) == real.cfg.n_layers
    worst_attn = max(a for a, _ in errors)
    worst_ffn = max(f for _, f in errors)
    assert worst_attn < REAL_TOL, f"attention reproduction error {worst_attn:.2e}"
    assert worst_ffn < REAL_TOL, f"FFN reproduction error {worst_ffn:.2e}"


@pytest.mark.real_model
def test_real_model_view_layout(smollm2, gemma3):
    s, g = model_view(smollm2), model_view(gemma3)
    assert (s.family, s.n_layers, s.d_model, s.n_heads) == ("llama", 30, 576, 9)
    assert (g.family, g.n_layers, g.d_model, g.n_heads) == ("gemma3", 18, 640, 4)
    sb, gb = s.block(11), g.block(5)
    assert sb.W_V.shape[0] == 9 and gb.W_V.shape[0] == 4  # 3 and 1 value heads, expanded
    assert sb.ln1_folded and sb.ln2_folded and not sb.parallel and sb.act_fn == "silu"
    assert gb.attn_post_scale is not None and gb.mlp_post_scale is not None and gb.act_fn.startswith("gelu")
