"""The attention update of a self-attending token as one matrix per block (analysis 2 in docs/analyses.md).

A token that attends only to itself (always the first token; the "self" path of any other token)
gets the attention update ``attn_out = A @ n + c``, linear in its normalised input ``n``
(``n = x / rms(x)`` for RMSNorm, ``(x - mean) / std`` for LayerNorm, before the norm's scale γ₁):

    A = Σ_h W_O^hᵀ W_V^hᵀ diag(γ₁) [· P]        (column form: A acts on column vectors)

with value heads repeated for grouped-query attention, γ₁ the pre-attention norm scale (all ones
when TransformerLens folded it into W_V) and, for LayerNorm models, ``P = I − 11ᵀ/d`` the norm's
centring (a no-op on the already-centred ``n``). The constant ``c`` collects the biases (β₁, b_V,
b_O). Neither includes a post-attention norm (Gemma-3's ``ln1_post``), which is not linear.

Reference: the linear approximation of self-attention for a single token, Wang et al., *Demystifying
Singular Defects in Large Language Models* (ICML 2025).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.linalg import LeadingTriplet, svd_signed
from sd_lens.models.view import ModelOrView, resolve_block

__all__ = ["AttentionMatrix", "attention_matrix"]


@dataclass(frozen=True, eq=False)
class AttentionMatrix(LeadingTriplet):
    """The self-attention update of block ``layer`` as a matrix (column form, float32, CPU).

    Attributes:
        layer: 0-based block index.
        A: ``[d_model, d_model]``, the sum of ``per_head``: ``attn_out = A @ n + bias``.
        per_head: ``[n_heads, d_model, d_model]``, one matrix per query head (GQA value heads
            repeated, so there are always ``n_heads`` of them).
        bias: ``[d_model]``, the input-independent part of the update (zeros without biases).
    """

    layer: int
    A: Float[Tensor, "d_model d_model"]
    per_head: Float[Tensor, "n_heads d_model d_model"]
    bias: Float[Tensor, " d_model"]

    @property
    def n_heads(self) -> int:
        """Number of (query) heads, i.e. ``per_head.shape[0]``."""
        return int(self.per_head.shape[0])

    def apply(self, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``A @ n + bias`` for a batch of normalised inputs (row vectors, shape ``[..., d]``)."""
        return n.to(torch.float32) @ self.A.T + self.bias

    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        return svd_signed(self.A)

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, S, Vh)`` of ``A`` (cached; see :func:`svd_signed` for the sign convention)."""
        return self._svd

    @property
    def singular_values(self) -> Float[Tensor, " d_model"]:
        """Singular values of ``A``, descending."""
        return self.svd()[1]

    @cached_property
    def ov_rank(self) -> int:
        """Numerical rank of ``A``: at most ``n_kv_heads · d_head`` (and ``d_model``).

        ``A`` is a float32 product, so singular values below ``σ_max · d · eps_float32`` count as
        zero (torch's default tolerance for float32).
        """
        return int(torch.linalg.matrix_rank(self.A.to(torch.float32)))


def attention_matrix(model_or_view: ModelOrView, layer: int | None = None) -> AttentionMatrix:
    """Extract the attention matrix ``A`` of block ``layer`` (Wang et al.'s single-token linear attention).

    Args:
        model_or_view: a TransformerLens model, a ``ModelView`` or a ``BlockView``.
        layer: 0-based block index (optional when a ``BlockView`` is given).

    Returns:
        An :class:`AttentionMatrix` with ``A`` (summed over heads), ``per_head`` and ``bias`` such
        that, for a normalised input ``n`` of a token attending only to itself,
        ``view.self_attention_out(n) == A @ n + bias`` (before any post-attention norm).
        The weights are read from float32 copies: nothing in the model is touched. Computed where
        the block's weights are; the matrices come back on the CPU.
    """
    view = resolve_block(model_or_view, layer)
    with torch.no_grad():
        per_head = view.attn_ov_per_head().contiguous()
        bias = view.self_attention_out(torch.zeros(view.d_model, device=view.W_out.device))
        A = per_head.sum(0)
    return AttentionMatrix(layer=view.layer, A=A.cpu(), per_head=per_head.cpu(), bias=bias.cpu())
