"""Causal verification (analysis 7): interventions as ordinary TransformerLens forward hooks.

Hook factories return plain ``hook(activation, hook)`` functions; ``*_hooks`` helpers return
``fwd_hooks`` lists for ``model.run_with_hooks(tokens, fwd_hooks=...)`` or ``model.hooks(...)``,
so they compose with TransformerLens's own patching tools. :func:`intervene` is a context
manager that attaches them and removes exactly them afterwards, even if the body raises.

The default hook point is the FFN's normalised input ``blocks.{l}.ln2.hook_normalized``, the
space in which the right singular vector v₀ of the linearised FFN lives.

Hooks return a *new* tensor: a ``TransformerBridge`` decides whether a norm hook edited its
value by object identity, so an in-place edit that returns the same tensor is silently ignored.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from sd_lens.errors import InputError
from sd_lens.ffn_fit import ffn_hook_name
from sd_lens.geometry import unit
from sd_lens.tokens import model_device, temporary_hooks, tokenize

HookFn = Callable[[Tensor, Any], Tensor]
Positions = int | Sequence[int] | None


# the hook whose output is block ``layer``'s normalised FFN input (where v0 is ablated or patched)
ffn_input_hook_name = ffn_hook_name


def _select(positions: Positions) -> Any:
    if positions is None:
        return slice(None)
    if isinstance(positions, int):
        return [positions]
    return list(positions)


def project_out(direction: Tensor, positions: Positions = None) -> HookFn:
    """Hook removing the component along ``direction`` at ``positions`` (all when None)."""
    d = unit(direction.detach().float())
    sel = _select(positions)

    def hook(act: Tensor, hook: Any) -> Tensor:
        u = d.to(act.device)
        out = act.clone()  # a new tensor: TransformerBridge ignores in-place edits of norm hooks
        part = act[:, sel].float()
        out[:, sel] = (part - (part @ u)[..., None] * u).to(act.dtype)
        return out

    return hook


def set_coefficient(direction: Tensor, value: float | Tensor, positions: Positions) -> HookFn:
    """Hook setting the coefficient along ``direction`` to ``value`` at ``positions``."""
    d = unit(direction.detach().float())
    sel = _select(positions)

    def hook(act: Tensor, hook: Any) -> Tensor:
        u = d.to(act.device)
        out = act.clone()
        part = act[:, sel].float()
        target = torch.as_tensor(value, dtype=torch.float32, device=act.device)
        out[:, sel] = (part + (target - part @ u)[..., None] * u).to(act.dtype)
        return out

    return hook


def ablation_hooks(layer: int, direction: Tensor, positions: Positions = None, hook_name: str | None = None):
    """``fwd_hooks`` projecting ``direction`` out of block ``layer``'s FFN input."""
    return [(hook_name or ffn_input_hook_name(layer), project_out(direction, positions))]


def patching_hooks(
    layer: int, direction: Tensor, value: float, positions: Positions, hook_name: str | None = None
):
    """``fwd_hooks`` setting the coefficient along ``direction`` in block ``layer``'s FFN input."""
    return [(hook_name or ffn_input_hook_name(layer), set_coefficient(direction, value, positions))]


@contextmanager
def intervene(model: Any, fwd_hooks: list[tuple[Any, HookFn]]) -> Iterator[Any]:
    """Attach ``fwd_hooks`` for the block only (pre-existing hooks are left alone)."""
    with temporary_hooks(model, fwd_hooks):
        yield model


@dataclass
class CausalCheck:
    """Ablation, random control and patching at one block (norms at that block's resid_post)."""

    layer: int
    tokens: list[str]
    norms_clean: Tensor  # [T] resid_post norms, no intervention
    norms_ablated: Tensor  # [T] v0 projected out of the FFN input at every position
    norms_random: Tensor  # [T] a random direction projected out instead
    norms_patched: Tensor  # [T] patched position's v0 coefficient set to the initial token's
    coefficients: Tensor  # [T] v0 coefficient of each token's FFN input (clean)
    position: int
    initial_coefficient: float
    random_seed: int

    @property
    def norm_before(self) -> float:
        return float(self.norms_clean[0])

    @property
    def norm_after(self) -> float:
        return float(self.norms_ablated[0])

    @property
    def random_control_after(self) -> float:
        return float(self.norms_random[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ablation": {
                "layer": self.layer,
                "norm_before": round(self.norm_before, 3),
                "norm_after": round(self.norm_after, 3),
                "random_control_after": round(self.random_control_after, 3),
            },
            "patching": {
                "layer": self.layer,
                "position": self.position,
                "token": self.tokens[self.position],
                "norm_before": round(float(self.norms_clean[self.position]), 3),
                "norm_after": round(float(self.norms_patched[self.position]), 3),
                "coefficient_before": round(float(self.coefficients[self.position]), 4),
                "coefficient_after": round(self.initial_coefficient, 4),
            },
        }


def _norms_and_coefs(model: Any, tokens: Tensor, layer: int, v0: Tensor, extra: list) -> tuple[Tensor, Tensor]:
    out: dict[str, Tensor] = {}

    def grab_norm(act: Tensor, hook: Any) -> None:
        out["norm"] = act[0].detach().float().norm(dim=-1).cpu()

    def grab_coef(act: Tensor, hook: Any) -> None:
        out["coef"] = (act[0].detach().float() @ v0.to(act.device)).cpu()

    hooks = extra + [(ffn_input_hook_name(layer), grab_coef), (f"blocks.{layer}.hook_resid_post", grab_norm)]
    device = model_device(model)
    with warnings.catch_warnings(), temporary_hooks(model, hooks):
        warnings.filterwarnings("ignore", message=".*edited hook_scale/hook_normalized.*")
        model(tokens.to(device), return_type=None, stop_at_layer=layer + 1)
    return out["norm"], out["coef"]


def verify_trigger(
    model: Any,
    layer: int,
    v0: Tensor,
    text: str = "The cat sat on the mat because it was warm.",
    *,
    position: int | None = None,
    seed: int = 0,
) -> CausalCheck:
    """Ablate v₀ at block ``layer`` (with a random-direction control) and patch it into a token.

    Args:
        model: the model.
        layer: the explosion block.
        v0: the trigger direction in the FFN's normalised-input space (e.g. ``fit.v0``).
        text: the text to run (BOS is prepended; position 0 is the initial token).
        position: the token to patch (default: the lowest-norm non-initial token among the first four).
        seed: seeds the random control direction.
    """
    if not 0 <= layer < int(model.cfg.n_layers):
        raise InputError(f"block {layer} does not exist: the model has blocks 0..{model.cfg.n_layers - 1}")
    tokens = tokenize(model, [text], max_tokens_per_text=None).sequences[0][None]
    if tokens.shape[1] < 2:
        raise InputError("verify_trigger needs a text of at least one token besides BOS")
    v = unit(v0.detach().float().cpu())
    clean, coefs = _norms_and_coefs(model, tokens, layer, v, [])
    if position is None:
        cand = list(range(1, min(4, tokens.shape[1])))
        position = min(cand, key=lambda p: float(clean[p]))
    if not 0 < position < tokens.shape[1]:
        raise InputError(f"position {position} is not a non-initial token of a {tokens.shape[1]}-token input")
    gen = torch.Generator().manual_seed(seed)
    rand = unit(torch.randn(v.shape[0], generator=gen))
    ablated, _ = _norms_and_coefs(model, tokens, layer, v, ablation_hooks(layer, v))
    randomed, _ = _norms_and_coefs(model, tokens, layer, v, ablation_hooks(layer, rand))
    init_coef = float(coefs[0])
    patched, _ = _norms_and_coefs(model, tokens, layer, v, patching_hooks(layer, v, init_coef, position))
    strs = [model.tokenizer.decode([int(t)]) for t in tokens[0]] if getattr(model, "tokenizer", None) else []
    return CausalCheck(
        layer=layer,
        tokens=strs,
        norms_clean=clean,
        norms_ablated=ablated,
        norms_random=randomed,
        norms_patched=patched,
        coefficients=coefs,
        position=position,
        initial_coefficient=init_coef,
        random_seed=seed,
    )
