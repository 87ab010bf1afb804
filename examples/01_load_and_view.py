"""Load SmolLM2, print the first tokens' norm table and what the model view says about block 11.

Run:  .venv/bin/python examples/01_load_and_view.py
(The first run converts the bundled GGUF into ~/.cache/sd_lens, ~25 s; later runs take seconds.)
"""

import torch

import sd_lens
from sd_lens.analyses.norm_table import first_token_norms

model = sd_lens.load_model("smollm2-135m-instruct")

# 1. The first token's norm explodes at block 11 (about 25 000 against a few hundred).
table = first_token_norms(model, "The cat sat on the mat because it was warm.", n_tokens=8)
print(table.format())

# 2. Block 11 through the model view: float32 copies, grouped-query heads expanded.
view = sd_lens.model_view(model)
blk = view.block(11)
print(f"\n{view.architecture} ({view.family}), {view.n_layers} blocks, d_model {view.d_model}")
print(f"block 11: W_V {tuple(blk.W_V.shape)}, W_O {tuple(blk.W_O.shape)}, "
      f"W_in {tuple(blk.W_in.shape)}, gated {blk.W_gate is not None}, act {blk.act_fn}, "
      f"norm {blk.norm}, gamma folded {blk.ln1_folded}/{blk.ln2_folded}, parallel {blk.parallel}")

A = blk.attn_ov()  # the attention update of a self-attending token: attn_out = A @ n
U, S, Vh = torch.linalg.svd(A)
print(f"A = sum_h W_O W_V diag(gamma_1): {tuple(A.shape)}, top singular values "
      f"{[round(s, 2) for s in S[:4].tolist()]}")

# 3. The view reproduces the model: the first token attends only to itself.
with torch.no_grad():
    names = ["blocks.11.hook_resid_pre", "blocks.11.hook_resid_mid", "blocks.11.hook_attn_out", "blocks.11.hook_mlp_out"]
    _, cache = model.run_with_cache("The cat sat on the mat.", names_filter=names)
n0 = blk.normalize(cache["blocks.11.hook_resid_pre"][0, 0])
ours = blk.self_attention_out(n0)
theirs = cache["blocks.11.hook_attn_out"][0, 0]
print(f"first-token attention output, view vs model: relative error "
      f"{((ours - theirs).norm() / theirs.norm()).item():.1e}")
ffn_in = blk.normalize(cache["blocks.11.hook_resid_mid"][0])
err = (blk.ffn_out(ffn_in) - cache["blocks.11.hook_mlp_out"][0]).norm() / cache["blocks.11.hook_mlp_out"][0].norm()
print(f"FFN output, view vs model (all tokens): relative error {err.item():.1e}")
print(f"FFN output norm of the first token at block 11: {cache['blocks.11.hook_mlp_out'][0, 0].norm():.0f}")
