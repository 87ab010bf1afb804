"""Simulated ("fake") W8A8 quantization of every linear layer of a TransformerLens model, reversibly.

Fake quantization (Jacob et al., CVPR 2018; the protocol of Xiao et al., *SmoothQuant*, ICML 2023 and
of Wang et al., *Demystifying Singular Defects in LLMs*, ICML 2025, §6): every linear layer computes
``Q(x) @ Q(W)^T`` in floating point, where ``Q`` is symmetric round-to-nearest (RTN) onto a ``b``-bit
integer grid and back::

    scale = max|t| / (2^(b-1) - 1),      Q(t) = clamp(round(t / scale), -(2^(b-1)-1), 2^(b-1)-1) * scale

The maximum runs over a whole tensor (**per-tensor**), over each token's features (**per-token**, for
activations) or over each output channel's inputs (**per-channel**, for weights). The error of one
entry is at most ``scale / 2``, so one huge entry — a massive activation at the initial token, the
hidden unit of the down-projection (F2) that writes a singular defect — makes the grid of every other
entry of its tensor coarse: that is what Wang et al. show breaks per-tensor W8A8 and what keeping the
explosion and decay blocks' F2 in high precision repairs.

**Which tensors.** The four linear inputs of a block, read at TransformerLens hook points (compatibility
mode), each shared by the linears that read it (a :data:`SITES` name):

* ``qkv``: ``blocks.l.ln1.hook_normalized`` -> q, k, v projections;
* ``o``: ``blocks.l.attn.hook_z`` (heads flattened) -> output projection;
* ``mlp_in``: ``blocks.l.ln2.hook_normalized`` -> gate and up (or the one input) projection;
* ``down``: ``blocks.l.mlp.hook_post`` -> the down-projection F2.

Models loaded by :func:`sd_lens.load_model` have the pre-norm scales **folded** into the following
weights (the norm's own weight is the identity), so ``hook_normalized`` — the *un-scaled* normalised
residual — is exactly what the (folded) linear reads: that is the tensor quantized here, together
with the folded weights. A deployed kernel on the unfolded model would quantize ``gamma * x`` instead;
the two differ where ``gamma`` is far from 1 — on Gemma-3 the pre-FFN norm *masks* the massive channel
(``1 + w = 0``), so here that channel still sits in the activation tensor (and sets its per-tensor
scale) while the folded weight row that reads it is exactly zero. SmoothQuant is not fooled that way:
a zero weight row makes its factor huge (``max|W_j|`` clamped at 1e-5), which divides the channel out
of the activation's range.

**Weights** are the parameters the forward actually uses: on a TransformerBridge the ``weight`` of the
Hugging Face ``nn.Linear`` / ``Conv1D`` each ``LinearBridge`` wraps (``model_view`` gives copies, not
those); on a TransformerLens 2.x HookedTransformer its ``W_Q … W_out`` (per-head attention weights
quantized as the matrices they flatten to, :class:`LinearWeight`). Their
data is swapped for quantized copies inside :func:`fake_quantize` and the original tensors are put back
on exit — the very same tensor objects, so the model is restored bit for bit, also after an exception.

No quantization library is used: the ones that simulate W8A8 (e.g. ``torchao``, ``llm-compressor``,
``bitsandbytes``, the SmoothQuant repository) target CUDA kernels or rewrite Hugging Face modules, not a
TransformerLens bridge whose activations must stay visible to hooks; the arithmetic above is a few lines.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sd_lens.errors import InputError
from sd_lens.models.linears import SITES, LinearWeight, linear_weights, site_hook
from sd_lens.runtime.engine import real_mask
from sd_lens.runtime.hooks import require_hooks
from sd_lens.runtime.lock import model_lock
from sd_lens.types import HookedModel, HookFn

if TYPE_CHECKING:  # pragma: no cover
    from sd_lens.quantize.smoothquant import SmoothScales

__all__ = [
    "PER_TOKEN",
    "RTN",
    "SCHEMES",
    "SITES",
    "SMOOTHQUANT",
    "LinearWeight",
    "Scheme",
    "fake_quantize",
    "linear_weights",
    "quantize_activation",
    "quantize_weight",
    "rtn",
    "site_hook",
]

#: the warning TransformerLens gives for every forward in which a hook edits ``hook_normalized``
_EDIT_WARNING = "A forward hook edited hook_scale/hook_normalized"

Granularity = Literal["tensor", "token", "channel"]


# ------------------------------------------------------------------------------------------------
# the quantizer
# ------------------------------------------------------------------------------------------------
def _qmax(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise InputError(f"bits must be an integer in 2..16, got {bits!r}")
    return 2 ** (bits - 1) - 1


def rtn(x: Tensor, amax: Tensor, bits: int = 8) -> Tensor:
    """Symmetric round-to-nearest of ``x`` on the grid of step ``amax / (2^(bits-1) - 1)``.

    ``amax`` broadcasts against ``x`` (one value per tensor, token or channel). Computed in float32 and
    returned in ``x``'s dtype; where ``amax`` is 0 the entries are returned as they are.
    """
    qmax = _qmax(bits)
    xf = x.float()
    scale = amax.float() / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(xf / safe), -qmax, qmax) * safe
    return torch.where(scale > 0, q, xf).to(x.dtype)


def quantize_activation(
    x: Float[Tensor, "batch pos *features"],
    granularity: Literal["tensor", "token"] = "tensor",
    bits: int = 8,
    real: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos *features"]:
    """Dynamic RTN of an activation ``[batch, pos, ...]`` (trailing dims are one feature axis).

    ``"tensor"``: one scale per sequence (row), the maximum over its ``real`` positions (all positions
    when None) and every feature — per-tensor quantization of each sequence as it would run alone, so
    the result does not depend on how texts are batched. ``"token"``: one scale per (row, position).
    """
    if granularity not in ("tensor", "token"):
        raise InputError(f"activation granularity must be 'tensor' or 'token', got {granularity!r}")
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    a = flat.detach().abs().float()
    if granularity == "token":
        amax = a.amax(-1, keepdim=True)
    else:
        if real is not None:
            a = a.masked_fill(~real.to(a.device)[:, :, None], 0.0)
        amax = a.amax((1, 2), keepdim=True)
    return rtn(flat, amax, bits).reshape(x.shape)


def quantize_weight(
    w: Tensor, granularity: Literal["tensor", "channel"] = "tensor", bits: int = 8, in_axis: int = 1
) -> Tensor:
    """RTN of a weight: one scale for the whole tensor, or one per output channel (the maximum over the
    input axis ``in_axis``: 1 for ``nn.Linear``'s ``[out, in]``, 0 for GPT-2's ``Conv1D`` ``[in, out]``)."""
    if granularity not in ("tensor", "channel"):
        raise InputError(f"weight granularity must be 'tensor' or 'channel', got {granularity!r}")
    a = w.detach().abs().float()
    amax = a.amax() if granularity == "tensor" else a.amax(in_axis, keepdim=True)
    return rtn(w, amax, bits)


# ------------------------------------------------------------------------------------------------
# schemes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """A fake-quantization scheme: granularity and bits of weights and activations (None: kept float).

    ``smooth_alpha``: SmoothQuant's migration strength (Xiao et al. 2023); the scheme then needs
    :class:`~sd_lens.quantize.smoothquant.SmoothScales` calibrated with the same alpha.
    """

    name: str
    weights: Literal["tensor", "channel"] | None = "tensor"
    activations: Literal["tensor", "token"] | None = "tensor"
    w_bits: int = 8
    a_bits: int = 8
    smooth_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.weights not in (None, "tensor", "channel"):
            raise InputError(f"weights must be 'tensor', 'channel' or None, got {self.weights!r}")
        if self.activations not in (None, "tensor", "token"):
            raise InputError(f"activations must be 'tensor', 'token' or None, got {self.activations!r}")
        _qmax(self.w_bits)
        _qmax(self.a_bits)
        a = self.smooth_alpha
        if a is not None and not (isinstance(a, (int, float)) and math.isfinite(a) and 0 <= a <= 1):
            raise InputError(f"smooth_alpha must be in [0, 1] or None, got {a!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "activations": self.activations,
                "w_bits": self.w_bits, "a_bits": self.a_bits, "smooth_alpha": self.smooth_alpha}


#: W8A8, per-tensor weights and per-tensor (per-sequence, dynamic) activations, round to nearest
RTN = Scheme("W8A8 RTN")
#: W8A8, per-channel weights and per-token activations
PER_TOKEN = Scheme("W8A8 per-token", weights="channel", activations="token")
#: SmoothQuant (alpha 0.5) before per-tensor W8A8 RTN
SMOOTHQUANT = Scheme("SmoothQuant W8A8", smooth_alpha=0.5)
SCHEMES: dict[str, Scheme] = {"rtn": RTN, "per_token": PER_TOKEN, "smoothquant": SMOOTHQUANT}


# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# the context manager
# ------------------------------------------------------------------------------------------------
def _check_blocks(model: HookedModel, blocks: Iterable[int], what: str) -> tuple[int, ...]:
    n = int(model.cfg.n_layers)
    out = []
    for b in blocks:
        if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < n:
            raise InputError(f"{what}: block {b!r} is not in 0..{n - 1}")
        out.append(b)
    return tuple(sorted(set(out)))


def _act_hook(
    granularity: Literal["tensor", "token"], bits: int, smooth: Tensor | None, live: list[bool], name: str
) -> HookFn:
    def hook(act: Tensor, hook: Any) -> Tensor:
        if not live[0]:
            raise InputError(f"the fake-quantization hook of {name} was used after its fake_quantize context ended")
        x = act
        if smooth is not None:
            flat = act.reshape(act.shape[0], act.shape[1], -1)
            x = (flat.float() / smooth.to(act.device)).to(act.dtype)
        real = real_mask()  # the engine's batch (None outside it: every position counts)
        if real is not None and tuple(real.shape) != tuple(act.shape[:2]):
            real = None
        return quantize_activation(x, granularity, bits, real).reshape(act.shape)

    return hook


def _smooth_only_hook(smooth: Tensor, live: list[bool]) -> HookFn:
    def hook(act: Tensor, hook: Any) -> Tensor:
        if not live[0]:
            raise InputError("a SmoothQuant hook was used after its fake_quantize context ended")
        flat = act.reshape(act.shape[0], act.shape[1], -1)
        return (flat.float() / smooth.to(act.device)).to(act.dtype).reshape(act.shape)

    return hook


def _scaled(w: Tensor, s: Tensor, in_axis: int) -> Tensor:
    shape = [1, 1]
    shape[in_axis] = -1
    return (w.float() * s.to(w.device).reshape(shape)).to(w.dtype)


@contextmanager
def fake_quantize(
    model: HookedModel,
    scheme: Scheme = RTN,
    *,
    keep: Iterable[int] = (),
    keep_sites: Sequence[str] = ("down",),
    smooth: SmoothScales | None = None,
) -> Iterator[list[tuple[str, HookFn]]]:
    """Fake-quantize every linear layer of ``model`` under ``scheme``; yield the activation hooks.

    Inside the ``with`` block the weights the forward uses hold quantized copies; the yielded
    ``fwd_hooks`` quantize the linears' inputs (pass them to :mod:`sd_lens.runtime` /
    :func:`~sd_lens.analyses.metrics.perplexity`; they compose with other hooks). The
    linears of ``keep_sites`` (default: the down-projection F2) in the blocks ``keep`` stay in full
    precision, weights and input. On exit — normally or through an exception — every weight gets its
    original tensor back (bit for bit) and the hooks refuse to run.

    With ``scheme.smooth_alpha`` set, ``smooth`` (:func:`~sd_lens.quantize.smoothquant.smoothquant_scales`,
    same alpha) gives the factors ``s``: the sites it covers compute ``Q(x / s) @ Q(W diag(s))^T``.
    A scheme with ``weights=None, activations=None`` and ``smooth`` applies the smoothing alone (the
    float function, up to rounding).

    Raises:
        InputError: bad blocks or sites, a smoothing scheme without (matching) ``smooth``.
        UnsupportedArchitectureError: neither a TransformerBridge nor a HookedTransformer, or a hook point missing.

    The model's lock (:func:`~sd_lens.runtime.lock.model_lock`) is held inside: no other thread's
    forward sees the quantized weights.
    """
    with model_lock(model), _fake_quantize(model, scheme, keep=keep, keep_sites=keep_sites, smooth=smooth) as hooks:
        yield hooks


@contextmanager
def _fake_quantize(
    model: HookedModel, scheme: Scheme, *, keep: Iterable[int], keep_sites: Sequence[str], smooth: SmoothScales | None,
) -> Iterator[list[tuple[str, HookFn]]]:
    kept = _check_blocks(model, keep, "keep")
    bad = [s for s in keep_sites if s not in SITES]
    if bad:
        raise InputError(f"keep_sites must be names from {SITES}, got {list(keep_sites)!r}")
    if scheme.smooth_alpha is not None:
        if smooth is None:
            raise InputError(f"scheme {scheme.name!r} smooths: calibrate factors with smoothquant_scales(model, texts)")
        if not math.isclose(smooth.alpha, scheme.smooth_alpha):
            raise InputError(f"the smoothing factors were calibrated with alpha {smooth.alpha}, the scheme has "
                             f"{scheme.smooth_alpha}")
    if smooth is not None and smooth.n_layers != int(model.cfg.n_layers):
        raise InputError(f"the smoothing factors are for {smooth.n_layers} blocks; the model has {model.cfg.n_layers}")
    linears = linear_weights(model)
    require_hooks(model, [site_hook(b, s) for b, s in linears])
    factors = smooth.scales if smooth is not None else {}
    for (b, s), factor in factors.items():
        if factor.numel() != linears[(b, s)][0].d_in:
            raise InputError(f"smoothing factors of block {b} {s!r} have {factor.numel()} entries; the layer reads "
                             f"{linears[(b, s)][0].d_in}")
    live = [True]
    hooks: list[tuple[str, HookFn]] = []
    originals: list[tuple[torch.nn.Parameter, Tensor]] = []
    done: set[int] = set()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EDIT_WARNING)
            for (b, s), lins in linears.items():
                if b in kept and s in keep_sites:
                    continue
                f = factors.get((b, s))
                for lin in lins:
                    if id(lin.param) in done:  # a weight shared by two sites is quantized once
                        continue
                    w = lin.param.data
                    m = lin.matrix(w)
                    new = m if f is None else _scaled(m, f, lin.in_axis)
                    if scheme.weights is not None:
                        new = quantize_weight(new, scheme.weights, scheme.w_bits, lin.in_axis)
                    if new is m:
                        continue
                    originals.append((lin.param, w))
                    done.add(id(lin.param))
                    lin.param.data = lin.unmatrix(new).contiguous()
                name = site_hook(b, s)
                if scheme.activations is not None:
                    hooks.append((name, _act_hook(scheme.activations, scheme.a_bits, f, live, name)))
                elif f is not None:
                    hooks.append((name, _smooth_only_hook(f, live)))
            yield hooks
    finally:
        live[0] = False
        with torch.no_grad():
            for param, data in reversed(originals):
                param.data = data
