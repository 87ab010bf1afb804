"""The model view's reproduction of each block from its weights, against the hook values of a forward
(shared by tests/unit/test_model_view.py and tests/integration/test_model_view_real.py)."""

from __future__ import annotations

import torch

from sd_lens.models.view import model_view

TEXT = "The cat sat on the mat. Then, it slept!"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest relative error over the rows of a (..., d) pair."""
    a, b = a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)).max().item()


def reproduction_errors(model, text: str = TEXT) -> list[tuple[float, float]]:
    """Per block: (first-token attention error, worst FFN error over all positions)."""
    view = model_view(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text))
    errors = []
    for layer, blk in enumerate(view):
        resid_pre = cache[f"blocks.{layer}.hook_resid_pre"][0]
        attn = blk.post_norm(blk.self_attention_out(blk.normalize(resid_pre[0])), blk.attn_post_scale)
        ffn_in = resid_pre if blk.parallel else cache[f"blocks.{layer}.hook_resid_mid"][0]
        ffn = blk.post_norm(blk.ffn_out(blk.normalize(ffn_in)), blk.mlp_post_scale)
        errors.append(
            (
                rel_err(attn, cache[f"blocks.{layer}.hook_attn_out"][0, 0]),
                rel_err(ffn, cache[f"blocks.{layer}.hook_mlp_out"][0]),
            )
        )
    return errors
