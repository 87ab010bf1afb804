"""Analysis 2: the attention matrix A of a self-attending token."""
from __future__ import annotations

import torch

from sd_lens import model_view
from sd_lens.analyses.attention_matrix import attention_matrix


def test_real_model_first_token_attention(smollm2):
    """SmolLM2 (grouped-query: 9 query heads, 3 value heads): A reproduces the first token's
    attention output at every block."""
    mv = model_view(smollm2)
    store: dict[int, dict[str, torch.Tensor]] = {}

    def grab(layer, key):
        def hook(t, hook):
            store.setdefault(layer, {})[key] = t[0, 0].detach().float().clone()

        return hook

    hooks = []
    for layer in range(mv.n_layers):
        hooks += [(f"blocks.{layer}.ln1.hook_normalized", grab(layer, "n")),
                  (f"blocks.{layer}.hook_attn_out", grab(layer, "out"))]
    with torch.no_grad():
        smollm2.run_with_hooks(smollm2.to_tokens("The cat"), fwd_hooks=hooks, stop_at_layer=mv.n_layers)
    for layer in range(mv.n_layers):
        am = attention_matrix(mv, layer)
        assert am.n_heads == 9
        out = store[layer]["out"]
        err = float((am.apply(store[layer]["n"]) - out).norm() / out.norm())
        assert err < 1e-4, (layer, err)
