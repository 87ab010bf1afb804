"""Where a model keeps the linear layers its forward computes with: :func:`linear_weights` and :func:`site_hook`.

The *sites* are a block's linear inputs (:data:`SITES`: ``"qkv"``, ``"o"``, ``"mlp_in"``, ``"down"``);
:func:`site_hook` names the hook point each site's linears read, :func:`linear_weights` finds the weight
parameters themselves (a TransformerBridge's wrapped ``nn.Linear``/``Conv1D``, a HookedTransformer's
``W_Q … W_out``). Fake quantization (:mod:`sd_lens.quantize.fake`) and the super-weight search
(:mod:`sd_lens.analyses.super_weights`) both read them here, on the models floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models.hooked import tl_version
from sd_lens.types import HookedModel

__all__ = ["SITES", "LinearWeight", "Site", "linear_weights", "site_hook"]

Site = Literal["qkv", "o", "mlp_in", "down"]
#: the linear inputs of a block, in the order the forward reads them
SITES: tuple[Site, ...] = ("qkv", "o", "mlp_in", "down")
_SITE_HOOK = {"qkv": "ln1.hook_normalized", "o": "attn.hook_z", "mlp_in": "ln2.hook_normalized", "down": "mlp.hook_post"}
#: which TransformerBridge components (``blocks.l.<attn|mlp>.<name>``) read each site
_SITE_LINEARS: dict[str, tuple[tuple[str, str], ...]] = {
    "qkv": (("attn", "q"), ("attn", "k"), ("attn", "v")),
    "o": (("attn", "o"),),
    "mlp_in": (("mlp", "gate"), ("mlp", "in")),
    "down": (("mlp", "out"),),
}


def site_hook(block: int, site: str) -> str:
    """The hook point whose value the linears of ``site`` read in ``block``."""
    if site not in _SITE_HOOK:
        raise InputError(f"site must be one of {SITES}, got {site!r}")
    return f"blocks.{block}.{_SITE_HOOK[site]}"



# where the weights live
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LinearWeight:
    """One linear layer: its weight parameter (the one the forward uses) and layout.

    ``matrix(t)`` is ``t`` (the parameter's data) as a 2-D matrix whose ``in_axis`` is the input
    features; ``unmatrix`` undoes it. A bridge's ``nn.Linear``/``Conv1D`` weight is already one; a
    HookedTransformer keeps its attention weights per head: ``W_Q/W_K/W_V`` ``[heads, d_model, d_head]``
    read as ``[d_model, heads·d_head]``, ``W_O`` ``[heads, d_head, d_model]`` as ``[heads·d_head, d_model]``.
    """

    block: int
    site: str
    name: str  # e.g. "attn.q", "mlp.out"
    param: torch.nn.Parameter
    in_axis: int  # the input-feature axis of ``matrix(param)``
    heads: Literal["", "in", "out"] = ""  # how a per-head parameter flattens (HookedTransformer)

    def matrix(self, t: Tensor) -> Tensor:
        if self.heads == "in":
            return t.permute(1, 0, 2).reshape(t.shape[1], -1)
        if self.heads == "out":
            return t.reshape(-1, t.shape[-1])
        return t

    def unmatrix(self, m: Tensor) -> Tensor:
        h = self.param.shape
        if self.heads == "in":
            return m.reshape(h[1], h[0], h[2]).permute(1, 0, 2)
        if self.heads == "out":
            return m.reshape(h)
        return m

    @property
    def d_in(self) -> int:
        return int(self.matrix(self.param).shape[self.in_axis])


def _linear_of(component: Any) -> tuple[torch.nn.Parameter, int]:
    inner = getattr(component, "original_component", None)
    weight = getattr(inner, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.ndim != 2:
        raise UnsupportedArchitectureError(f"{type(component).__name__} wraps no 2-D weight")
    if isinstance(inner, torch.nn.Linear):
        return weight, 1
    if type(inner).__name__ == "Conv1D":  # transformers' GPT-2 layer: y = x @ W + b, W [in, out]
        return weight, 0
    raise UnsupportedArchitectureError(f"unknown linear layer type {type(inner).__name__}")


#: a HookedTransformer's weight parameters per site: (module, attribute, per-head layout); a
#: grouped-query attention keeps its key/value weights in ``_W_K``/``_W_V``
_HOOKED_PARAMS: dict[str, tuple[tuple[str, str, Literal["", "in", "out"]], ...]] = {
    "qkv": (("attn", "W_Q", "in"), ("attn", "W_K", "in"), ("attn", "W_V", "in")),
    "o": (("attn", "W_O", "out"),),
    "mlp_in": (("mlp", "W_gate", ""), ("mlp", "W_in", "")),
    "down": (("mlp", "W_out", ""),),
}


def _hooked_linear_weights(model: HookedModel) -> dict[tuple[int, str], list[LinearWeight]]:
    out: dict[tuple[int, str], list[LinearWeight]] = {}
    for b in range(int(model.cfg.n_layers)):
        blk = model.blocks[b]
        for site in SITES:
            found = []
            for part, attr, heads in _HOOKED_PARAMS[site]:
                module = getattr(blk, part, None)
                param = getattr(module, "_" + attr, None) if attr in ("W_K", "W_V") else None
                if not isinstance(param, torch.nn.Parameter):
                    param = getattr(module, attr, None)
                if not isinstance(param, torch.nn.Parameter):
                    continue
                found.append(LinearWeight(b, site, f"{part}.{attr}", param, 0, heads))
            if not found:
                raise UnsupportedArchitectureError(f"block {b} has no weight reading {site!r}")
            out[(b, site)] = found
    return out


def linear_weights(model: HookedModel) -> dict[tuple[int, str], list[LinearWeight]]:
    """``{(block, site): [LinearWeight, ...]}`` for every block and :data:`SITES` entry.

    A TransformerBridge's are the ``nn.Linear``/``Conv1D`` weights its components wrap; a
    HookedTransformer's (TransformerLens 2.x) its ``W_Q … W_out`` parameters.

    Raises:
        UnsupportedArchitectureError: neither, or a site without its linears.
    """
    blocks = getattr(model, "blocks", None)
    first = getattr(blocks[0], "attn", None) if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None
    if not hasattr(model, "original_model") and isinstance(getattr(first, "W_Q", None), torch.nn.Parameter):
        return _hooked_linear_weights(model)
    if blocks is None or not hasattr(model, "original_model"):
        raise UnsupportedArchitectureError(
            "fake quantization swaps the weights of a model's linear layers: a TransformerBridge "
            "(sd_lens.load_model) or a HookedTransformer"
        )
    if tl_version()[:1] == (3,) and bool(getattr(model.cfg, "gated_mlp", False)):
        # found by tests/unit/test_quantize.py under 3.9: swapping the wrapped gate projection's weight
        # leaves the forward unchanged, so its quantization would silently be missing
        raise UnsupportedArchitectureError(
            "fake quantization of a gated-MLP model needs TransformerLens 4 (or 2.x): a TransformerLens 3.x "
            "bridge's gated MLP does not compute with the gate projection's wrapped weight"
        )
    out: dict[tuple[int, str], list[LinearWeight]] = {}
    for b in range(int(model.cfg.n_layers)):
        blk = blocks[b]
        for site in SITES:
            found = []
            for part, name in _SITE_LINEARS[site]:
                comp = getattr(getattr(blk, part, None), name, None)
                if comp is None:
                    continue
                param, axis = _linear_of(comp)
                found.append(LinearWeight(b, site, f"{part}.{name}", param, axis))
            if not found:
                raise UnsupportedArchitectureError(f"block {b} has no linear layer reading {site!r}")
            out[(b, site)] = found
    return out

