"""Reducers for :func:`sd_lens.runtime.engine.stream` and :func:`~sd_lens.runtime.engine.run`.

A reducer turns one hook point's activation (``[batch, pos, ...]``, detached) into what a caller
keeps; these are the common ones. They compute where the activation is (float32); the engine
brings their values to the CPU once per forward (:func:`~sd_lens.runtime.engine.to_host`).
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.runtime.engine import Batch, Reducer, keep

__all__ = ["coefficient", "first_row", "keep", "last_token", "resident", "token_norms"]


def token_norms(act: Float[Tensor, "batch pos d"], batch: Batch) -> Float[Tensor, "batch pos"]:
    """‖x‖ of every position (float32); padded positions are computed but meaningless."""
    return torch.linalg.vector_norm(act.float(), dim=-1)


def last_token(act: Float[Tensor, "batch pos d"], batch: Batch) -> Float[Tensor, "batch d"]:
    """The vector of each row's last real token (float32)."""
    rows = torch.arange(act.shape[0], device=act.device)
    return act[rows, batch.lengths_on(act.device) - 1].float()


def first_row(reducer: Reducer) -> Reducer:
    """``reducer`` applied to a one-row batch, returning row 0 of its value."""

    def reduce(act: Tensor, batch: Batch) -> Tensor:
        return reducer(act, batch)[0]

    return reduce


def resident(t: Tensor) -> Callable[[torch.device], Tensor]:
    """``at(device)``: ``t`` on ``device``, copied there on the first call only and without waiting
    for the device (a blocking host-to-device copy inside a hook makes the forward wait, so a reducer
    reads its constants through this)."""
    on: dict[torch.device, Tensor] = {}

    def at(device: torch.device) -> Tensor:
        if device not in on:
            on[device] = t.to(device, non_blocking=True)
        return on[device]

    return at


def coefficient(direction: Float[Tensor, " d"]) -> Reducer:
    """Coefficient of each position along ``direction``: ``act @ direction`` (float32)."""
    d = resident(direction.float())

    def reduce(act: Tensor, batch: Batch) -> Float[Tensor, "batch pos"]:
        return act.float() @ d(act.device)

    return reduce
