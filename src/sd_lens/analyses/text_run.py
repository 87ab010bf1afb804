"""One text through the model: per-token residual norms of every block, and attention patterns.

:func:`run_text` is what the report's per-text views and :func:`sd_lens.analyses.norm_table.first_token_norms` run:
one forward (stopping after the last block, no unembedding) that keeps ‖x‖ at every
``blocks.{l}.hook_resid_post`` and, for the blocks asked for, ``blocks.{l}.attn.hook_pattern``.

Reference: per-layer token norms as in Wang et al., *Demystifying Singular Defects in Large Language
Models* (ICML 2025), Fig. 1; the patterns show the attention sink on the first token (Gu et al., *When
Attention Sink Emerges in Language Models: An Empirical View*, ICLR 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.runtime.engine import Reducer, keep, run
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.reducers import first_row, token_norms
from sd_lens.runtime.tokens import decode, tokenize
from sd_lens.types import HookedModel

__all__ = ["TextRun", "run_text"]


@dataclass(frozen=True, eq=False)
class TextRun:
    """Per-token norms (and optionally attention patterns) of one text, from one hooked forward.

    Attributes:
        text: the text (the model's BOS convention applies: position 0 is BOS when it prepends one).
        tokens: the token strings.
        token_ids: long ``[n_tokens]``.
        norms: float32 ``[n_tokens, n_layers]``: ‖x‖ at ``blocks.{l}.hook_resid_post``.
        patterns: block -> float32 ``[n_heads, n_tokens, n_tokens]`` attention probabilities.
    """

    text: str
    tokens: list[str]
    token_ids: Tensor
    norms: Tensor
    patterns: dict[int, Tensor] = field(default_factory=dict)


def run_text(
    model: HookedModel, text: str, attention_layers: Sequence[int] = (), max_tokens: int | None = 64
) -> TextRun:
    """Run ``text`` once with temporary hooks: resid_post norms of every block, and the attention
    patterns (``blocks.{l}.attn.hook_pattern``) of ``attention_layers``.

    Args:
        model: a TransformerLens model (:func:`sd_lens.load_model`).
        text: the text (tokenised like the analyses: the model's BOS convention).
        attention_layers: blocks whose attention patterns to keep.
        max_tokens: keep only the first ``max_tokens`` tokens (None: all, up to the context).

    Returns:
        A :class:`TextRun`. No hook stays attached; the weights are not touched.

    Raises:
        InputError: empty text, a block that does not exist, or a model without pattern hooks.
        NonFiniteActivationError: the model produced NaN or inf activations.
    """
    n_layers = int(model.cfg.n_layers)
    layers = sorted({int(layer) for layer in attention_layers})
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise InputError(f"block {layer} does not exist: the model has blocks 0..{n_layers - 1}")
    ids = tokenize(model, [text], max_tokens_per_text=max_tokens).sequences[0]
    names = {act_name("resid_post", layer): layer for layer in range(n_layers)}
    patterns_at = {act_name("pattern", layer): layer for layer in layers}
    require_hooks(model, list(names) + list(patterns_at))
    reducers: dict[str, Reducer] = {name: first_row(token_norms) for name in names}
    reducers.update({name: first_row(keep) for name in patterns_at})
    out = run(model, ids, reducers, stop_at_layer=n_layers)
    norms = torch.stack([out[name] for name in names], dim=1)
    if not torch.isfinite(norms).all():
        bad = sorted({int(b) for b in torch.nonzero(~torch.isfinite(norms))[:, 1]})
        raise NonFiniteActivationError(
            f"non-finite residual norms at blocks {bad} for text {text[:60]!r}; load the model in float32"
        )
    patterns = {layer: out[name] for name, layer in patterns_at.items()}
    return TextRun(text, decode(model, ids), ids, norms, patterns)
