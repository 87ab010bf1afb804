"""Weight outliers: down-projection rows and columns that stand out, and channels the norms mask or amplify.

Weights only, no forward. Per block, from :func:`sd_lens.models.view.model_view`:

* **Down-projection** ``W_out`` [d_mlp, d_model] (An et al., *Systematic Outliers in Large Language
  Models*, ICLR 2025, §3, weight outliers). For each row (hidden unit) and each column (residual
  channel) the peakedness ``max|w| / mean|w|``; a row or column is an outlier when its peakedness is at
  least ``stat_ratio`` times the block's median peakedness of rows (resp. columns).
* **Norm scales**: the pre-attention norm (``ln1``), the pre-FFN norm (``ln2``) and, where the family
  has them, the post-attention and post-FFN norms (``attn_post``, ``mlp_post``; Gemma's sandwich
  norms). The *effective* scale is used (Gemma's ``1 + w``). A channel is **masked** when
  ``|scale| <= mask_tol`` (the norm removes it: on Gemma ``1 + w`` is exactly 0 when ``w = -1``) and
  **amplified** when ``|scale| >= gain_ratio`` times the norm's median ``|scale|``. Masking before the FFN
  is how a model keeps a massive activation (Sun et al., *Massive Activations in Large Language
  Models*, 2024) from reaching its FFN input; a large post-norm gain is how it writes one.

**Folded norms.** A model loaded in TransformerLens compatibility mode has its pre-norm scales folded
into the following weights (the norm itself is then the identity): row ``c`` of ``W_V`` (``ln1``) and
of ``[W_in, W_gate]`` (``ln2``) has been multiplied by the scale of channel ``c``. The scale itself is
then not recoverable; what is used instead is the *relative row norm* ``|row_c| / median_c |row_c|``
(``source="folded"``). A masked channel still gives exactly 0, so masking is found exactly; an
amplified channel confounds the scale with the weights' own row norm, so read ``amplified`` of a
folded norm as "the norm and the weights after it together amplify the channel".

Nothing here is tuned to a model: every threshold is a parameter, relative to the block's own median.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.errors import InputError
from sd_lens.models.metadata import model_name
from sd_lens.models.view import BlockView, ModelView, model_view
from sd_lens.types import HookedModel

__all__ = ["NORMS", "DownProjOutliers", "NormScales", "WeightOutliers", "weight_outliers"]

#: the norms of a block, in the order they act
NORMS = ("ln1", "attn_post", "ln2", "mlp_post")

Source = Literal["scale", "folded"]


@dataclass(frozen=True, eq=False)
class NormScales:
    """One norm of one block: its (effective or proxy) per-channel scale and the outlying channels.

    ``masked``: channels with ``|scale| <= mask_tol``. ``amplified``: ``(channel, scale, scale /
    median)`` for channels with ``|scale| >= gain_ratio x median``, largest first.
    """

    block: int
    norm: str
    source: Source
    scale: Float[Tensor, " d_model"]
    median: float
    masked: list[int]
    amplified: list[tuple[int, float, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "norm": self.norm,
            "source": self.source,
            "median": round(self.median, 4),
            "min": round(float(self.scale.abs().min()), 6),
            "max": round(float(self.scale.abs().max()), 4),
            "masked": list(self.masked),
            "amplified": [{"channel": c, "scale": round(s, 4), "ratio": round(r, 2)} for c, s, r in self.amplified],
        }


@dataclass(frozen=True, eq=False)
class DownProjOutliers:
    """Down-projection rows (hidden units) and columns (residual channels) whose peakedness stands out.

    Each outlier is ``(index, max|w|/mean|w|, that over the block's median)``, largest first.
    """

    block: int
    rows: list[tuple[int, float, float]]
    cols: list[tuple[int, float, float]]
    row_median: float
    col_median: float

    def to_dict(self) -> dict[str, Any]:
        def fmt(items: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
            return [{"index": i, "peak": round(s, 3), "ratio": round(r, 3)} for i, s, r in items]

        return {
            "block": self.block,
            "row_median": round(self.row_median, 4),
            "col_median": round(self.col_median, 4),
            "rows": fmt(self.rows),
            "cols": fmt(self.cols),
        }


@dataclass(frozen=True, eq=False)
class WeightOutliers:
    """Weight outliers of every block (see the module docstring)."""

    model: str
    n_layers: int
    d_model: int
    mask_tol: float
    gain_ratio: float
    stat_ratio: float
    norms: dict[tuple[int, str], NormScales]
    down: list[DownProjOutliers]
    norm_names: tuple[str, ...] = field(default=NORMS)

    def _norm(self, block: int, norm: str) -> NormScales | None:
        if norm not in NORMS:
            raise InputError(f"unknown norm {norm!r}; choose one of {NORMS}")
        if not isinstance(block, int) or not 0 <= block < self.n_layers:
            raise InputError(f"block {block!r} does not exist: the model has blocks 0..{self.n_layers - 1}")
        return self.norms.get((block, norm))

    def _channel(self, channel: int) -> int:
        try:
            channel = operator.index(channel)  # ints, numpy and 0-d torch integers
        except TypeError:
            raise InputError(f"channel must be an integer, got {channel!r}") from None
        if not 0 <= channel < self.d_model:
            raise InputError(f"channel {channel!r} does not exist: the residual stream has 0..{self.d_model - 1}")
        return channel

    def is_masked(self, block: int, channel: int, norm: str = "ln2") -> bool:
        """Does ``norm`` of ``block`` mask ``channel`` (|scale| <= mask_tol)? False if the block has no such norm."""
        n = self._norm(block, norm)
        return n is not None and self._channel(channel) in n.masked

    def is_amplified(self, block: int, channel: int, norm: str = "ln2") -> bool:
        """Does ``norm`` of ``block`` amplify ``channel`` (|scale| >= gain_ratio x its median)?"""
        n = self._norm(block, norm)
        return n is not None and self._channel(channel) in {c for c, _, _ in n.amplified}

    def masked_before_ffn(self, block: int, channel: int) -> bool:
        """Is ``channel`` masked by the pre-FFN norm of ``block``?"""
        return self.is_masked(block, channel, "ln2")

    def amplified_before_ffn(self, block: int, channel: int) -> bool:
        """Is ``channel`` amplified by the pre-FFN norm of ``block``?"""
        return self.is_amplified(block, channel, "ln2")

    def scale(self, block: int, norm: str = "ln2") -> Tensor | None:
        """The effective (``source="scale"``) or proxy (``"folded"``) scale of a norm; None if absent."""
        n = self._norm(block, norm)
        return None if n is None else n.scale.clone()

    def masked_channels(self, norm: str = "ln2") -> dict[int, list[int]]:
        """``{block: masked channels}`` for one norm, blocks with none left out."""
        return {b: n.masked for (b, nm), n in sorted(self.norms.items()) if nm == norm and n.masked}

    def amplified_channels(self, norm: str = "mlp_post") -> dict[int, list[int]]:
        """``{block: amplified channels}`` for one norm, blocks with none left out."""
        return {b: [c for c, _, _ in n.amplified] for (b, nm), n in sorted(self.norms.items()) if nm == norm and n.amplified}

    def max_gain(self, channel: int, norm: str = "mlp_post") -> dict[int, float]:
        """``{block: |scale[channel]|}`` of one norm at every block that has it."""
        c = self._channel(channel)
        return {b: float(n.scale[c].abs()) for (b, nm), n in sorted(self.norms.items()) if nm == norm}

    def summary(self) -> str:
        lines = [f"weight outliers of {self.model} (mask_tol {self.mask_tol:g}, gain_ratio {self.gain_ratio:g})"]
        for norm in self.norm_names:
            masked, amp = self.masked_channels(norm), self.amplified_channels(norm)
            if masked or amp:
                lines.append(f"  {norm}: masked {masked}; amplified {amp}")
        n_rows = sum(len(d.rows) for d in self.down)
        n_cols = sum(len(d.cols) for d in self.down)
        lines.append(f"  down-projection: {n_rows} outlier rows, {n_cols} outlier columns (>= {self.stat_ratio:g} x median)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "mask_tol": self.mask_tol,
            "gain_ratio": self.gain_ratio,
            "stat_ratio": self.stat_ratio,
            "norms": [n.to_dict() for _, n in sorted(self.norms.items())],
            "down": [d.to_dict() for d in self.down],
        }


def _peaked(w: Tensor, dim: int, stat_ratio: float) -> tuple[list[tuple[int, float, float]], float]:
    a = w.abs()
    mean = a.mean(dim)
    peak = torch.where(mean > 0, a.amax(dim) / mean.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(mean))
    med = float(peak.median())
    ratio = peak / med if med > 0 else torch.zeros_like(peak)
    idx = torch.nonzero(ratio >= stat_ratio).flatten().tolist() if med > 0 else []
    items = sorted(((int(i), float(peak[i]), float(ratio[i])) for i in idx), key=lambda t: -t[1])
    return items, med


def _relative_rows(w: Float[Tensor, "d_model n"]) -> Tensor:
    r = w.norm(dim=1)
    med = r.median()
    return r / med if med > 0 else r


def _norm_scales(b: BlockView) -> dict[str, tuple[Source, Tensor]]:
    out: dict[str, tuple[Source, Tensor]] = {}
    if b.ln1_folded:
        heads = b.W_V.permute(1, 0, 2).reshape(b.W_V.shape[1], -1)  # [d_model, heads * d_head]
        out["ln1"] = ("folded", _relative_rows(heads))
    else:
        out["ln1"] = ("scale", b.ln1_scale)
    if b.attn_post_scale is not None:
        out["attn_post"] = ("scale", b.attn_post_scale)
    if b.ln2_folded:
        ffn_in = b.W_in if b.W_gate is None else torch.cat([b.W_in, b.W_gate], dim=1)
        out["ln2"] = ("folded", _relative_rows(ffn_in))
    else:
        out["ln2"] = ("scale", b.ln2_scale)
    if b.mlp_post_scale is not None:
        out["mlp_post"] = ("scale", b.mlp_post_scale)
    return out


def weight_outliers(
    model: HookedModel | ModelView,
    *,
    mask_tol: float = 1e-3,
    gain_ratio: float = 20.0,
    stat_ratio: float = 5.0,
) -> WeightOutliers:
    """Find down-projection outliers and masked / amplified norm channels of every block.

    Args:
        model: a TransformerLens model or its :class:`~sd_lens.models.view.ModelView`.
        mask_tol: a channel is masked when its |effective scale| is at most this (for a folded
            norm: its relative row norm, see the module docstring).
        gain_ratio: a channel is amplified when its |scale| is at least this times the norm's median |scale|.
        stat_ratio: a down-projection row / column is an outlier when its ``max|w|/mean|w|`` is at
            least this times the block's median of that statistic.

    Raises:
        InputError: a non-finite or non-positive threshold.

    Example:
        >>> import sd_lens
        >>> w = sd_lens.weight_outliers(sd_lens.tiny_model("llama"))
        >>> w.n_layers, w.d_model
        (2, 64)
    """
    for name, v in (("mask_tol", mask_tol), ("gain_ratio", gain_ratio), ("stat_ratio", stat_ratio)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(f"{name} must be a finite non-negative number, got {v!r}")
    if gain_ratio <= 1 or stat_ratio <= 1:
        raise InputError(f"gain_ratio and stat_ratio must exceed 1, got {gain_ratio!r}, {stat_ratio!r}")
    view = model if isinstance(model, ModelView) else model_view(model)
    name = model_name(view._model) if isinstance(model, ModelView) else model_name(model)
    norms: dict[tuple[int, str], NormScales] = {}
    down: list[DownProjOutliers] = []
    for layer in range(view.n_layers):
        b = view.block(layer)
        for norm, (source, scale) in _norm_scales(b).items():
            a = scale.abs()
            med = float(a.median())
            masked = torch.nonzero(a <= mask_tol).flatten().tolist()
            amp_idx = torch.nonzero(a >= gain_ratio * med).flatten().tolist() if med > 0 else []
            amplified = sorted(((int(c), float(scale[c]), float(a[c]) / med) for c in amp_idx), key=lambda t: -abs(t[1]))
            norms[(layer, norm)] = NormScales(layer, norm, source, scale.cpu().clone(), med, [int(c) for c in masked], amplified)
        rows, row_med = _peaked(b.W_out, 1, stat_ratio)
        cols, col_med = _peaked(b.W_out, 0, stat_ratio)
        down.append(DownProjOutliers(layer, rows, cols, row_med, col_med))
    return WeightOutliers(
        model=name,
        n_layers=view.n_layers,
        d_model=view.d_model,
        mask_tol=float(mask_tol),
        gain_ratio=float(gain_ratio),
        stat_ratio=float(stat_ratio),
        norms=norms,
        down=down,
        norm_names=tuple(n for n in NORMS if any(k[1] == n for k in norms)),
    )
