"""Reducers for :func:`sd_lens.runtime.engine.stream` and :func:`~sd_lens.runtime.engine.run`.

A reducer turns one hook point's activation (``[batch, pos, ...]``, detached) into what a caller
keeps; these are the common ones. Values come back as float32 on the CPU.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.runtime.engine import Batch, Reducer, keep

__all__ = ["coefficient", "first_row", "keep", "last_token", "token_norms"]


def token_norms(act: Float[Tensor, "batch pos d"], batch: Batch) -> Float[Tensor, "batch pos"]:
    """‖x‖ of every position (float32, CPU); padded positions are computed but meaningless."""
    return torch.linalg.vector_norm(act.float(), dim=-1).cpu()


def last_token(act: Float[Tensor, "batch pos d"], batch: Batch) -> Float[Tensor, "batch d"]:
    """The vector of each row's last real token (float32, CPU)."""
    rows = torch.arange(act.shape[0], device=act.device)
    return act[rows, (batch.lengths - 1).to(act.device)].float().cpu()


def first_row(reducer: Reducer) -> Reducer:
    """``reducer`` applied to a one-row batch, returning row 0 of its value."""

    def reduce(act: Tensor, batch: Batch) -> Tensor:
        return reducer(act, batch)[0]

    return reduce


def coefficient(direction: Float[Tensor, " d"]) -> Reducer:
    """Coefficient of each position along ``direction``: ``act @ direction`` (float32, CPU)."""

    def reduce(act: Tensor, batch: Batch) -> Float[Tensor, "batch pos"]:
        return (act.float() @ direction.to(act.device)).cpu()

    return reduce
