"""Analysis 2: the attention matrix A of a self-attending token."""
from __future__ import annotations

import pytest
import torch

from sd_lens import model_view
from sd_lens.analyses.attention_matrix import AttentionMatrix, attention_matrix
from sd_lens.errors import InputError
from sd_lens.linalg import svd_signed
from sd_lens.models.hooked import backend
from sd_lens.models.view import resolve_block


def _self_attention_states(model, layer: int, text: str = "hello world") -> dict[str, torch.Tensor]:
    """Normalised attention input and attention output of position 0 (it attends only to itself)."""
    store: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(t, hook):
            store[name] = t[:, 0].detach().float().clone()

        return hook

    names = [f"blocks.{layer}.ln1.hook_normalized", f"blocks.{layer}.hook_attn_out"]
    with torch.no_grad():
        model.run_with_hooks(model.to_tokens([text, "ab"]), fwd_hooks=[(n, grab(n)) for n in names],
                             stop_at_layer=layer + 1)
    return {"n": store[names[0]], "attn_out": store[names[1]]}


def test_A_matches_the_models_own_attention_of_the_first_token(tiny_variant, unchanged):
    """End to end (GQA, folded or unfolded norms, biases, sandwich norm): the first token's real
    attention output equals post_norm(A n + bias)."""
    mv = model_view(tiny_variant)
    if backend() == "hooked" and mv.block(0).norm == "layer" and not mv.block(0).ln1_folded:
        pytest.skip("bridge only: an unfolded HookedTransformer LayerNorm applies its weight and bias before hook_normalized")
    with unchanged(tiny_variant):
        for layer in range(mv.n_layers):
            am = attention_matrix(tiny_variant, layer)
            v = mv.block(layer)
            st = _self_attention_states(tiny_variant, layer)
            pred = v.post_norm(am.apply(st["n"]), v.attn_post_scale)
            torch.testing.assert_close(pred, st["attn_out"], atol=2e-5, rtol=1e-4)


def test_A_is_the_linear_part_of_self_attention_out(tiny_variant):
    mv = model_view(tiny_variant)
    v = mv.block(1)
    am = attention_matrix(mv, 1)
    torch.manual_seed(0)
    n = v.normalize(torch.randn(16, v.d_model) * 3 + 1)
    expected = v.self_attention_out(n) - v.self_attention_out(torch.zeros(v.d_model))
    torch.testing.assert_close(n @ am.A.T, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(am.bias, v.self_attention_out(torch.zeros(v.d_model)))
    torch.testing.assert_close(am.per_head.sum(0), am.A)


def test_per_head_count_and_gqa_rank(tiny):
    cfg = tiny.cfg
    am = attention_matrix(tiny, 0)
    assert am.per_head.shape == (cfg.n_heads, cfg.d_model, cfg.d_model)
    assert am.n_heads == cfg.n_heads
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    bound = min(n_kv * cfg.d_head, cfg.d_model - (1 if model_view(tiny).block(0).norm == "layer" else 0))
    assert am.ov_rank == bound  # random init: full rank within the value heads' span


@pytest.mark.bridge_only(reason="compares with the bridge's Hugging Face attention module")
def test_gqa_heads_share_value_weights():
    """Query heads of one group use the same value head: W_V repeated, not reshaped."""
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama", compatibility_mode=False)  # 4 query heads, 2 value heads
    hf_attn = model.original_model.model.layers[0].self_attn
    d_head = model.cfg.d_head
    W_v = hf_attn.v_proj.weight.detach().float()  # [n_kv * d_head, d]
    W_o = hf_attn.o_proj.weight.detach().float()  # [d, n_heads * d_head]
    gamma = model_view(model).block(0).ln1_scale
    am = attention_matrix(model, 0)
    group = model.cfg.n_heads // (W_v.shape[0] // d_head)
    for h in range(model.cfg.n_heads):
        kv = h // group
        A_h = W_o[:, h * d_head:(h + 1) * d_head] @ W_v[kv * d_head:(kv + 1) * d_head] * gamma
        torch.testing.assert_close(am.per_head[h], A_h, atol=1e-6, rtol=1e-5)


def test_svd_triplet(tiny):
    am = attention_matrix(tiny, 1)
    U, S, Vh = am.svd()
    assert am.svd() is am.svd()  # cached
    torch.testing.assert_close(am.A @ am.v0, am.s0 * am.u0, atol=1e-5, rtol=1e-4)
    assert float(am.u0.norm()) == pytest.approx(1.0, abs=1e-5)
    assert bool(torch.all(S[:-1] >= S[1:]))
    assert float(U[U[:, 0].abs().argmax(), 0]) > 0  # sign rule: largest entry of u0 positive


def test_svd_signed_sign_convention():
    torch.manual_seed(1)
    m = torch.randn(6, 6)
    U, S, Vh = svd_signed(m)
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, m, atol=1e-5, rtol=1e-5)
    U2, _, _ = svd_signed(-m)
    torch.testing.assert_close(U, U2, atol=1e-5, rtol=1e-5)  # u_k fixed, v_k absorbs the sign


def test_accepts_model_modelview_or_blockview(tiny):
    mv = model_view(tiny)
    a = attention_matrix(tiny, 1).A
    torch.testing.assert_close(attention_matrix(mv, 1).A, a)
    torch.testing.assert_close(attention_matrix(mv.block(1)).A, a)
    assert isinstance(attention_matrix(mv, -1), AttentionMatrix)
    assert attention_matrix(mv, -1).layer == mv.n_layers - 1
    with pytest.raises(InputError):
        resolve_block(mv.block(1), 0)
    with pytest.raises(InputError):
        attention_matrix(mv, mv.n_layers)
    with pytest.raises(InputError):
        resolve_block(mv, None)
