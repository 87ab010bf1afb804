"""Interventions as ordinary TransformerLens forward hooks.

Hook factories return plain ``hook(activation, hook)`` functions; ``*_hooks`` helpers return
``fwd_hooks`` lists for ``model.run_with_hooks(tokens, fwd_hooks=...)`` or ``model.hooks(...)``,
so they compose with TransformerLens's own patching tools. :func:`intervene` is a context
manager that attaches them and removes exactly them afterwards, even if the body raises.

The default hook point is the FFN's normalised input ``blocks.{l}.ln2.hook_normalized``, the
space in which the right singular vector v₀ of the linearised FFN lives (the explosion is
triggered by the input component along v₀).

Hooks return a *new* tensor: a ``TransformerBridge`` decides whether a norm hook edited its
value by object identity, so an in-place edit that returns the same tensor is silently ignored.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observation (iv) (high norms are triggered by the right leading singular vector).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.linalg import unit
from sd_lens.runtime.hooks import ffn_input, temporary_hooks
from sd_lens.runtime.reducers import resident
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "Positions",
    "ablation_hooks",
    "ffn_input_hook_name",
    "intervene",
    "patching_hooks",
    "project_out",
    "remove_matched",
    "set_coefficient",
]

Positions = int | Sequence[int] | None

#: the hook whose output is block ``layer``'s normalised FFN input (where v0 is ablated or patched)
ffn_input_hook_name = ffn_input

def _select(positions: Positions) -> Any:
    if positions is None:
        return slice(None)
    if isinstance(positions, int):
        return [positions]
    return list(positions)


def _along(direction: Float[Tensor, " d"], positions: Positions, edit: Callable[[Tensor, Tensor, Tensor], Tensor]) -> HookFn:
    """A hook replacing the rows ``part`` (float32) at ``positions`` by ``edit(part, part @ u, u)``,
    ``u`` the unit ``direction`` (copied to the device once)."""
    d = resident(unit(direction.detach().float()))
    sel = _select(positions)

    def hook(act: Tensor, hook: Any) -> Tensor:
        u = d(act.device)
        out = act.clone()  # a new tensor: TransformerBridge ignores in-place edits of norm hooks
        part = act[:, sel].float()
        out[:, sel] = edit(part, part @ u, u).to(act.dtype)
        return out

    return hook


def project_out(
    direction: Float[Tensor, " d"], positions: Positions = None, removed: list[float] | None = None
) -> HookFn:
    """Hook removing the component along ``direction`` at ``positions`` (all when None).

    With ``removed`` (a list), each call appends the largest norm it removed, for a matched
    control (:func:`remove_matched`); that reads a value off the device, so leave it out otherwise.
    """

    def edit(part: Tensor, coef: Tensor, u: Tensor) -> Tensor:
        if removed is not None:
            removed.append(float(coef.abs().max()))
        return part - coef[..., None] * u

    return _along(direction, positions, edit)


def remove_matched(direction: Float[Tensor, " d"], size: float, positions: Positions = None) -> HookFn:
    """Hook removing a vector of norm ``size`` along ``direction`` at ``positions`` (a matched control).

    The removed vector is ``sign(act @ direction) * size * direction``: it shrinks the component
    along ``direction`` by ``size`` (through zero if it is smaller).
    """
    return _along(
        direction, positions, lambda part, coef, u: part - (torch.where(coef >= 0, 1.0, -1.0) * size)[..., None] * u
    )


def set_coefficient(direction: Float[Tensor, " d"], value: float | Float[Tensor, ""], positions: Positions) -> HookFn:
    """Hook setting the coefficient along ``direction`` to ``value`` at ``positions``."""

    def edit(part: Tensor, coef: Tensor, u: Tensor) -> Tensor:
        target = torch.as_tensor(value, dtype=torch.float32, device=part.device)
        return part + (target - coef)[..., None] * u

    return _along(direction, positions, edit)


def ablation_hooks(
    layer: int, direction: Float[Tensor, " d"], positions: Positions = None, hook_name: str | None = None
) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` projecting ``direction`` out of block ``layer``'s FFN input."""
    return [(hook_name or ffn_input_hook_name(layer), project_out(direction, positions))]


def patching_hooks(
    layer: int, direction: Float[Tensor, " d"], value: float, positions: Positions, hook_name: str | None = None
) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` setting the coefficient along ``direction`` in block ``layer``'s FFN input."""
    return [(hook_name or ffn_input_hook_name(layer), set_coefficient(direction, value, positions))]


@contextmanager
def intervene(model: HookedModel, fwd_hooks: list[tuple[str, HookFn]]) -> Iterator[HookedModel]:
    """Attach ``fwd_hooks`` for the ``with`` block only (pre-existing hooks are left alone).

    Inside, call the model as usual (``model(tokens)``, ``model.run_with_cache(...)``); the hooks
    are removed on exit, also when the body raises. Gradients are off inside (``torch.no_grad``,
    like every sd_lens forward); for a backward pass use ``model.hooks(fwd_hooks=...)`` instead.
    """
    with temporary_hooks(model, fwd_hooks):
        yield model


