"""Normalised FFN inputs on real text: the samples of the ``"real"`` FFN fit.

:func:`collect_ffn_inputs` streams texts through the model up to the deepest requested block and
keeps, for each token, the FFN's normalised input ``n`` (``blocks.{l}.ln2.hook_normalized``): the
inputs of the ``"real"`` fit of :func:`~sd_lens.analyses.ffn_fit.fit_ffn`, which replaces the Gaussian
samples of the paper's least-squares FFN approximation by the inputs the FFN actually sees.

Reference: the least-squares FFN approximation of Wang et al., *Demystifying Singular Defects in Large
Language Models* (ICML 2025).
"""

from __future__ import annotations

from typing import Any, Sequence, overload

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.errors import InputError
from sd_lens.runtime.engine import Batch, stream
from sd_lens.runtime.hooks import ffn_input
from sd_lens.runtime.reducers import resident
from sd_lens.runtime.tokens import as_sequences
from sd_lens.types import HookedModel

__all__ = ["collect_ffn_inputs", "ffn_hook_name"]

#: The hook whose output is the normalised FFN input ``n`` of block ``layer``.
ffn_hook_name = ffn_input


@overload
def collect_ffn_inputs(
    model: HookedModel, texts_or_tokens: Any, layer: int, *, max_tokens: int | None = ...,
    batch_size: int = ..., exclude_positions: Sequence[int] = ..., progress: bool | str = ...,
) -> Float[Tensor, "N d_model"]: ...


@overload
def collect_ffn_inputs(
    model: HookedModel, texts_or_tokens: Any, layer: Sequence[int], *, max_tokens: int | None = ...,
    batch_size: int = ..., exclude_positions: Sequence[int] = ..., progress: bool | str = ...,
) -> dict[int, Float[Tensor, "N d_model"]]: ...


def collect_ffn_inputs(
    model: HookedModel,
    texts_or_tokens: str | Sequence[str] | Tensor | Sequence[Tensor] | Sequence[Sequence[int]],
    layer: int | Sequence[int],
    *,
    max_tokens: int | None = 20_000,
    batch_size: int = 16,
    exclude_positions: Sequence[int] = (0,),
    progress: bool | str = False,
) -> Float[Tensor, "N d_model"] | dict[int, Float[Tensor, "N d_model"]]:
    """Normalised FFN inputs ``n`` of block ``layer`` on real text, one row per token.

    Runs the model in batches with a forward hook on ``blocks.{layer}.ln2.hook_normalized``
    (which equals ``BlockView.normalize`` of the FFN's residual input: ``resid_mid``, or
    ``resid_pre`` for parallel blocks) and ``stop_at_layer = layer + 1``, so no deeper block and
    no unembedding runs. The hook is removed when the call ends, also on errors; hooks attached
    to the model beforehand are left alone.

    Args:
        model: a TransformerLens model.
        texts_or_tokens: a string, a list of strings (each tokenized on its own with the model's
            BOS convention), a ``[batch, pos]`` token tensor (every position is real) or a list of
            token-id sequences of any lengths. Sequences are batched by length and right-padded
            (exact for causal attention); padding positions are never returned.
        layer: 0-based block index, or several (one forward pass collects them all, stopping
            after the deepest).
        max_tokens: use only as many leading sequences as give this many rows, and truncate to
            it (``None``: no limit).
        batch_size: sequences per forward pass.
        exclude_positions: positions (within each sequence; negative counts from the end) to
            drop. The default drops the initial token, whose state is an outlier (a singular
            defect) in most models; pass ``()`` to keep everything.

    Returns:
        ``[N, d_model]`` float32 tensor on the CPU in input order (sequences, then positions);
        for a sequence of layers, a dict ``{layer: tensor}``.

    Raises:
        InputError: a block that does not exist, or no tokens.
    """
    single = isinstance(layer, int)
    layers = [layer] if isinstance(layer, int) else [int(x) for x in layer]
    n_layers = int(model.cfg.n_layers)
    for lay in layers:
        if not 0 <= lay < n_layers:
            raise InputError(f"block {lay!r} does not exist: the model has blocks 0..{n_layers - 1}")
    if not layers:
        raise InputError("no layer given")
    seqs = as_sequences(model, texts_or_tokens)
    if not seqs:
        raise InputError("no tokens to run: give at least one non-empty text or token sequence")
    excluded = {int(p) for p in exclude_positions}
    pad_id = getattr(getattr(model, "tokenizer", None), "pad_token_id", None)

    # keep[i] = positions of sequence i to return
    keep: list[Tensor] = []
    total = 0
    for s in seqs:
        mask = torch.ones(s.numel(), dtype=torch.bool)
        for p in excluded:
            if -s.numel() <= p < s.numel():
                mask[p] = False
        keep.append(torch.arange(s.numel())[mask])
        total += int(mask.sum())
        if max_tokens is not None and total >= max_tokens:
            break  # the sequences after this one are not needed
    needed = [i for i in range(len(keep)) if keep[i].numel() > 0]

    kept_at = {i: resident(keep[needed[i]]) for i in range(len(needed))}

    def kept_rows(act: Tensor, batch: Batch) -> list[Tensor]:  # on the device; the engine copies them out
        return [act[row, kept_at[i](act.device)].float() for row, i in enumerate(batch.index)]

    names = {lay: ffn_input(lay) for lay in sorted(set(layers))}
    results: dict[int, dict[int, Tensor]] = {lay: {} for lay in names}
    batches = stream(
        model, [seqs[i] for i in needed], {name: kept_rows for name in names.values()},
        batch_size=batch_size, longest_first=True, pad_id=0 if pad_id is None else int(pad_id),
        progress=progress and "FFN inputs",
    )
    for batch, out in batches:  # batch similar lengths together, longest first
        for lay, name in names.items():
            for i, rows in zip(batch.index, out[name]):
                results[lay][needed[i]] = rows
    collected: dict[int, Tensor] = {}
    for lay in layers:
        rows = [results[lay][i] for i in needed]
        x = torch.cat(rows, 0) if rows else torch.empty(0, int(model.cfg.d_model))
        collected[lay] = x[:max_tokens] if max_tokens is not None else x
    return collected[layers[0]] if single else collected
