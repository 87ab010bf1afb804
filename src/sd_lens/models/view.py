"""One coordinate system for the linear pieces of every block, whatever the architecture.

The analyses need, per block: the value/output weights of every head (grouped-query heads
expanded), the pre-attention and pre-FFN norm scales (or the fact that they are folded into the
following weights), the FFN weights and activation, extra norms after attention and FFN
(Gemma-3's sandwich norms) and whether attention and FFN run in parallel (GPT-NeoX).

Everything here is read from TransformerLens attribute names (``W_V``, ``W_O``, ``W_in``,
``W_gate``, ``W_out``, ``ln1``, ``ln2``, ``ln1_post``, ``ln2_post``), which a
``TransformerBridge`` in compatibility mode and a TL 2.x ``HookedTransformer`` share, and copied
to float32 tensors: a view never aliases, and so can never modify, the model's weights.

Which layout a model has comes from its registered :class:`~sd_lens.models.registry.Family`
(:mod:`sd_lens.models.families` registers the built-ins); :func:`standard_block_view` reads every
family that brings no builder of its own.

Conventions: weights are stored the TransformerLens way (row vectors: ``v = n @ W_V[h]``);
matrices returned by methods act on column vectors the way the papers write them
(``attn_out = A @ n``), so a left singular vector is an output direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any, Callable, Literal, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models.registry import Family, architecture_of, get_family, weight_is_scale
from sd_lens.types import HookedModel

#: What the weight-only analyses accept: a model, its :class:`ModelView` (reuse one: block views are
#: cached) or one :class:`BlockView`.
ModelOrView = Union[HookedModel, "ModelView", "BlockView"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda z: F.gelu(z, approximate="tanh"),
    "gelu_fast": lambda z: F.gelu(z, approximate="tanh"),
    "gelu_pytorch_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
}


def _on_weights(method: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A :class:`BlockView` method computing where the block's weights are (a GPU when the model is
    there) and returning on its input's device: analyses stay device-agnostic."""

    @wraps(method)
    def run(self: "BlockView", x: Tensor, *args: Any) -> Tensor:
        here, there = x.device, self.W_out.device
        return method(self, x.to(there), *args).to(here)

    return run


def _f32(t: Any) -> Tensor | None:
    if t is None or not isinstance(t, Tensor):
        return None
    return t.detach().to(torch.float32).clone()


def _norm_params(
    ln: Any, d_model: int, effective_scale: Callable[[Tensor], Tensor] = weight_is_scale
) -> tuple[Tensor, Tensor | None]:
    """(effective scale γ, bias β or None) of a norm module of either TL flavour."""
    # A bridge wraps the Hugging Face norm (and aliases `w` to its raw weight): read the module.
    original = getattr(ln, "original_component", None)
    weight = getattr(original, "weight", None)
    if isinstance(weight, Tensor):
        scale = effective_scale(weight.detach().to(torch.float32).clone())  # e.g. Gemma's 1 + w
        return scale, _f32(getattr(original, "bias", None))
    w = getattr(ln, "w", None)  # HookedTransformer LayerNorm/RMSNorm (Gemma's +1 already applied)
    if isinstance(w, Tensor):
        return _f32(w), _f32(getattr(ln, "b", None))  # type: ignore[return-value]
    return torch.ones(d_model), None  # LNPre / RMSNormPre: scale folded away


def _is_identity_norm(scale: Tensor, bias: Tensor | None) -> bool:
    return bool(torch.all(scale == 1)) and (bias is None or not bool(torch.any(bias != 0)))


def _expand_heads(t: Tensor | None, n_heads: int) -> Tensor | None:
    if t is None or t.shape[0] == n_heads:
        return t
    if n_heads % t.shape[0]:
        raise UnsupportedArchitectureError(f"{n_heads} query heads cannot share {t.shape[0]} value heads")
    return t.repeat_interleave(n_heads // t.shape[0], dim=0)


@dataclass(frozen=True, eq=False)
class BlockView:
    """The linear pieces of one block, float32 copies, grouped-query heads expanded."""

    layer: int
    family: str
    norm: Literal["rms", "layer"]
    eps: float
    parallel: bool
    ln1_scale: Float[Tensor, " d_model"]
    ln1_bias: Float[Tensor, " d_model"] | None
    W_V: Float[Tensor, "n_heads d_model d_head"]
    b_V: Float[Tensor, "n_heads d_head"] | None
    W_O: Float[Tensor, "n_heads d_head d_model"]
    b_O: Float[Tensor, " d_model"] | None
    ln2_scale: Float[Tensor, " d_model"]
    ln2_bias: Float[Tensor, " d_model"] | None
    W_in: Float[Tensor, "d_model d_mlp"]
    b_in: Float[Tensor, " d_mlp"] | None
    W_gate: Float[Tensor, "d_model d_mlp"] | None
    b_gate: Float[Tensor, " d_mlp"] | None
    W_out: Float[Tensor, "d_mlp d_model"]
    b_out: Float[Tensor, " d_model"] | None
    act_fn: str
    attn_post_scale: Float[Tensor, " d_model"] | None = None
    mlp_post_scale: Float[Tensor, " d_model"] | None = None

    @property
    def d_model(self) -> int:
        return self.W_O.shape[-1]

    @property
    def ln1_folded(self) -> bool:
        """True when the pre-attention norm scale lives inside W_V (TransformerLens fold_ln)."""
        return _is_identity_norm(self.ln1_scale, self.ln1_bias)

    @property
    def ln2_folded(self) -> bool:
        return _is_identity_norm(self.ln2_scale, self.ln2_bias)

    # -- elementwise pieces -------------------------------------------------------------
    def act(self, z: Tensor) -> Tensor:
        return _ACTIVATIONS[self.act_fn](z)

    def normalize(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The norm without its scale: x / rms(x) (RMSNorm) or (x - mean) / std (LayerNorm)."""
        x = x.to(torch.float32)
        if self.norm == "layer":
            x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def centering(self) -> Float[Tensor, "d_model d_model"]:
        """The linear part of the normalisation's mean removal (identity for RMSNorm)."""
        d = self.d_model
        eye = torch.eye(d, device=self.W_out.device)
        return eye - 1.0 / d if self.norm == "layer" else eye

    # -- attention ------------------------------------------------------------------------
    def attn_ov_per_head(self) -> Float[Tensor, "n_heads d_model d_model"]:
        """A_h with attn_out_h = A_h @ n for a token attending only to itself (column form)."""
        ov = torch.einsum("hdk,hke->hed", self.W_V, self.W_O) * self.ln1_scale  # (W_V W_O)^T diag(gamma)
        # LayerNorm's mean removal is the linear map I - 11^T/d: right-multiplying by it removes row means
        return ov - ov.mean(-1, keepdim=True) if self.norm == "layer" else ov

    def attn_ov(self) -> Float[Tensor, "d_model d_model"]:
        """A = sum_h W_O^h W_V^h diag(gamma_1), the attention update of a self-attending token."""
        return self.attn_ov_per_head().sum(0)

    @_on_weights
    def self_attention_out(self, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Exact attention output (before any post-norm) of a token that attends only to itself."""
        h = n.to(torch.float32) * self.ln1_scale
        if self.ln1_bias is not None:
            h = h + self.ln1_bias
        v = torch.einsum("...d,hdk->...hk", h, self.W_V)
        if self.b_V is not None:
            v = v + self.b_V
        out = torch.einsum("...hk,hkd->...d", v, self.W_O)
        return out + self.b_O if self.b_O is not None else out

    # -- FFN ---------------------------------------------------------------------------------
    @_on_weights
    def ffn_input(self, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        h = n.to(torch.float32) * self.ln2_scale
        return h + self.ln2_bias if self.ln2_bias is not None else h

    @_on_weights
    def ffn_hidden(self, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_mlp"]:
        """Hidden activation (the input of the down-projection) for normalised inputs n."""
        h = self.ffn_input(n)
        pre = h @ self.W_in + (self.b_in if self.b_in is not None else 0.0)
        if self.W_gate is None:
            return self.act(pre)
        gate = h @ self.W_gate + (self.b_gate if self.b_gate is not None else 0.0)
        return self.act(gate) * pre

    @_on_weights
    def ffn_out(self, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """FFN output before any post-FFN norm."""
        out = self.ffn_hidden(n) @ self.W_out
        return out + self.b_out if self.b_out is not None else out

    def to(self, device: torch.device | str) -> "BlockView":
        """This view with every tensor on ``device`` (itself when they are there already)."""
        return on_one_device(self, device)

    @_on_weights
    def post_norm(self, y: Tensor, scale: Tensor | None) -> Tensor:
        """Gemma-style post-norm (RMSNorm times its scale); identity when the block has none."""
        if scale is None:
            return y
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * scale.to(y.device)


def _check_layout(family: Family, what: str, declared: object, found: object) -> None:
    if declared != found:
        raise UnsupportedArchitectureError(
            f"the model does not match its registered family {family.name!r}: the family declares "
            f"{what}={declared!r} but the model has {found!r}. Register a family that describes it."
        )


def standard_block_view(model: HookedModel, layer: int, family: Family) -> BlockView:
    """Read block ``layer`` through TransformerLens's attribute names, as ``family`` declares it.

    The builder of every family without its own ``block_view``. Works for a ``TransformerBridge``
    in compatibility mode or not and for a TL 2.x ``HookedTransformer``.
    """
    cfg = model.cfg
    blk = model.blocks[layer]
    d = cfg.d_model
    attn, mlp = blk.attn, blk.mlp
    normalization = str(cfg.normalization_type or "")
    if normalization:
        _check_layout(family, "norm", family.norm, "layer" if normalization.upper().startswith("LN") else "rms")
    _check_layout(family, "gated", family.gated, bool(getattr(cfg, "gated_mlp", False)))
    _check_layout(family, "post_norms", family.post_norms, hasattr(blk, "ln1_post") and hasattr(blk, "ln2_post"))
    scale = family.effective_scale
    ln1_scale, ln1_bias = _norm_params(blk.ln1, d, scale)
    ln2_scale, ln2_bias = _norm_params(blk.ln2, d, scale) if hasattr(blk, "ln2") else (torch.ones(d), None)
    n_heads = cfg.n_heads
    post1 = _norm_params(blk.ln1_post, d, scale)[0] if family.post_norms else None
    post2 = _norm_params(blk.ln2_post, d, scale)[0] if family.post_norms else None
    act_fn = str(cfg.act_fn)
    if act_fn not in _ACTIVATIONS:
        raise UnsupportedArchitectureError(
            f"activation {act_fn!r} has no sd_lens implementation; known: {', '.join(sorted(_ACTIVATIONS))}"
        )
    gated = family.gated
    with torch.no_grad():
        return BlockView(
            layer=layer,
            family=family.name,
            norm=family.norm,
            eps=float(getattr(cfg, "eps", 1e-5)),
            parallel=family.is_parallel(model),
            ln1_scale=ln1_scale,
            ln1_bias=ln1_bias,
            W_V=_expand_heads(_f32(attn.W_V), n_heads),  # type: ignore[arg-type]
            b_V=_expand_heads(_f32(getattr(attn, "b_V", None)), n_heads),
            W_O=_f32(attn.W_O),  # type: ignore[arg-type]
            b_O=_f32(getattr(attn, "b_O", None)),
            ln2_scale=ln2_scale,
            ln2_bias=ln2_bias,
            W_in=_f32(mlp.W_in),  # type: ignore[arg-type]
            b_in=_f32(getattr(mlp, "b_in", None)),
            W_gate=_f32(mlp.W_gate) if gated else None,
            b_gate=_f32(getattr(mlp, "b_gate", None)) if gated else None,
            W_out=_f32(mlp.W_out),  # type: ignore[arg-type]
            b_out=_f32(getattr(mlp, "b_out", None)),
            act_fn=act_fn,
            attn_post_scale=post1,
            mlp_post_scale=post2,
        )


#: a view keeps the float32 copies of every block it built while they fit in this many bytes;
#: beyond (7B models: 26 GB), only the last few blocks, rebuilt when read again
CACHE_ALL_BYTES = 2 * 2**30
CACHED_BLOCKS_BIG = 4


def on_one_device(view: BlockView, device: torch.device | str | None = None) -> BlockView:
    """``view`` with every tensor on ``device`` (default: its ``W_out``'s, the block's weights; a GPU
    when the model is there): defaults such as an absent norm's unit scale are made on the host."""
    import dataclasses

    device = view.W_out.device if device is None else torch.device(device)
    moved = {
        f.name: getattr(view, f.name).to(device)
        for f in dataclasses.fields(view)
        if isinstance(getattr(view, f.name), Tensor) and getattr(view, f.name).device != device
    }
    return dataclasses.replace(view, **moved) if moved else view


class ModelView:
    """Per-block linear pieces of a TransformerLens model, built lazily and cached.

    The cache is keyed on the view object, so make a new view after editing weights. It keeps every
    block when their float32 copies fit in :data:`CACHE_ALL_BYTES` (2 GiB), else the last
    :data:`CACHED_BLOCKS_BIG` blocks read (so a 7B model's view holds 3 GB, not 26).
    """

    def __init__(self, model: HookedModel):
        self._family = get_family(model)
        self.family: str = self._family.name
        self.architecture = architecture_of(model)
        cfg = model.cfg
        self.n_layers: int = int(cfg.n_layers)
        self.d_model: int = int(cfg.d_model)
        self.n_heads: int = int(cfg.n_heads)
        self.d_mlp: int = int(cfg.d_mlp)
        self._model = model
        blocks = getattr(model, "blocks", None)
        n_params = sum(p.numel() for p in blocks.parameters()) if isinstance(blocks, torch.nn.Module) else 0
        self.cache_size: int | None = None if 4 * n_params <= CACHE_ALL_BYTES else CACHED_BLOCKS_BIG
        self._block = lru_cache(maxsize=self.cache_size)(self._build)

    def _build(self, layer: int) -> BlockView:
        view = (self._family.block_view or standard_block_view)(self._model, layer, self._family)
        if not isinstance(view, BlockView):
            raise UnsupportedArchitectureError(
                f"family {self._family.name!r}: its block_view builder returned {type(view).__name__}, not a BlockView"
            )
        return on_one_device(view)

    def block(self, layer: int) -> BlockView:
        if not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
            raise InputError(f"block {layer!r} does not exist: the model has blocks 0..{self.n_layers - 1}")
        return self._block(layer % self.n_layers)

    def __iter__(self):
        return (self.block(layer) for layer in range(self.n_layers))

    def __len__(self) -> int:
        return self.n_layers

    @property
    def parallel(self) -> bool:
        return self.block(0).parallel


def model_view(model: HookedModel) -> ModelView:
    """Build the :class:`ModelView` of a model (raises for architectures no family covers)."""
    return ModelView(model)


def resolve_block(model_or_view: ModelOrView, layer: int | None) -> BlockView:
    """The :class:`~sd_lens.models.view.BlockView` of ``layer``.

    ``model_or_view`` is a TransformerLens model, a :class:`~sd_lens.models.view.ModelView` (reuse
    one across calls: its blocks are cached) or a ``BlockView`` itself (then ``layer`` may be
    ``None``; if given it must match the view's layer).
    """
    if isinstance(model_or_view, BlockView):
        if layer is not None and layer != model_or_view.layer:
            raise InputError(f"a BlockView of block {model_or_view.layer} was given with layer={layer}")
        return model_or_view
    if layer is None:
        raise InputError("layer is required unless a BlockView is given")
    view = model_or_view if isinstance(model_or_view, ModelView) else model_view(model_or_view)
    return view.block(layer)
