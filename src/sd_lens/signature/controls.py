"""Controls for signature comparisons: the same model written in another basis of its residual stream.

:func:`rotate_residual` returns a copy of a Llama-family Hugging Face model whose residual stream is
``Qᵀ x`` for a random orthogonal ``Q`` (seeded). With RMSNorm this is function-preserving once the
norms' scales are folded into the weights that read the normalised state (RMSNorm without scale
commutes with any orthogonal map: ``rms(Qᵀx) = rms(x)``); the tied unembedding is untied, because
the final norm's scale is folded into it and not into the embedding. Every output is unchanged up
to float rounding (the "computational invariance" of Ashkboos et al., *SliceGPT*, ICLR 2024).

What it shows: the signature is a direction in the basis the training run landed in. The rotated
model computes the same function, has the same defects at the same blocks with the same norms, and
its signatures are ``Qᵀ`` times the original's: about 90° from them (two random directions in
``d`` dimensions are ``90 ± 57.3/√d`` degrees apart), exactly as far as an unrelated model of the
same width. What it does not show: that an independently *trained* model lands elsewhere — that is the
paper's finding (87–89° for unrelated 7B models); the rotation only makes the unrelated end of the
scale concrete on a model we have, and checks that the angles are read in a consistent basis
(the rotated model's signature, rotated back by ``Q``, matches the original).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.errors import UnsupportedArchitectureError

__all__ = ["random_orthogonal", "rotate_residual"]


def random_orthogonal(d: int, seed: int = 0) -> Float[Tensor, "d d"]:
    """A Haar-random ``d × d`` orthogonal matrix (QR of a Gaussian matrix with the sign fix), float64."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


@torch.no_grad()
def rotate_residual(hf_model: Any, seed: int = 0) -> tuple[Any, Float[Tensor, "d d"]]:
    """A copy of a Llama-family HF causal LM with its residual basis rotated by a random orthogonal ``Q``.

    Returns ``(rotated copy, Q)``; a residual state ``x`` of the original is ``Q x'`` of the copy,
    so a signature ``s`` of the original corresponds to ``Qᵀ s`` in the copy. The original is untouched.

    Raises:
        UnsupportedArchitectureError: not a Llama-style model (RMSNorm, q/k/v/o and gate/up/down projections).
    """
    inner = getattr(hf_model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(layers[0], "mlp") or not hasattr(layers[0].mlp, "gate_proj"):
        raise UnsupportedArchitectureError(
            f"rotate_residual supports Llama-style models (RMSNorm, gate/up/down MLP); got {type(hf_model).__name__}"
        )
    if any(hasattr(layer, "pre_feedforward_layernorm") or hasattr(layer, "post_feedforward_layernorm") for layer in layers):
        raise UnsupportedArchitectureError("post-norms (Gemma-style) are not rotation-equivariant with scales; Llama only")
    model = copy.deepcopy(hf_model).to(torch.float32)
    inner = model.model
    d = int(model.config.hidden_size)
    Q = random_orthogonal(d, seed)

    def read(linear: Any, gamma: Tensor | None) -> None:  # W x with x = Q x': W Q (scale folded first)
        W = linear.weight.double()
        if gamma is not None:
            W = W * gamma.double()[None, :]
        linear.weight.copy_((W @ Q).to(linear.weight.dtype))

    def write(linear: Any) -> None:  # adds Qᵀ (W h) to x'
        linear.weight.copy_((Q.T @ linear.weight.double()).to(linear.weight.dtype))
        if getattr(linear, "bias", None) is not None:
            linear.bias.copy_((Q.T @ linear.bias.double()).to(linear.bias.dtype))

    # untie first: the final norm's scale folds into the unembedding only
    head = model.lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = []
    emb = inner.embed_tokens.weight
    emb.copy_((emb.double() @ Q).to(emb.dtype))
    for layer in inner.layers:
        g1 = layer.input_layernorm.weight.detach().clone()
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            read(proj, g1)
        write(layer.self_attn.o_proj)
        g2 = layer.post_attention_layernorm.weight.detach().clone()
        read(layer.mlp.gate_proj, g2)
        read(layer.mlp.up_proj, g2)
        write(layer.mlp.down_proj)
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
    read(head, inner.norm.weight.detach().clone())
    inner.norm.weight.fill_(1.0)
    return model, Q.float()
