"""Does a finding survive float32? The defects of a half-precision forward against float32's.

A model loaded in float16 or bfloat16 also *runs* in it: the residual stream, the norms and the
directions sd_lens measures are those of the low-precision forward. On SmolLM2 a float16 forward
moves the high norms of blocks 11-28 by up to 13 % and one token's norm at block 29 by 71 %, enough
to make a high-norm group that float32 does not have; Gemma-3 overflows (docs/models.md, Dtypes).

:func:`dtype_check` runs the norm probe and the defect search again with the forward in a reference
dtype (float32 by default, the weights cast for the check and restored exactly:
:func:`sd_lens.runtime.precision.forward_dtype`) and pairs the defects of the two runs. Two defects
are the same when their block ranges overlap and, at some shared block, their directions are within
``split_angle_deg`` (the angle :func:`~sd_lens.analyses.defects.find_defects` uses to tell
directions apart; sign-blind). A defect of the model's dtype with no partner is a *phantom*: the
precision made it. A reference defect with no partner is *missed*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.defects import Defect, DefectReport, find_defects
from sd_lens.analyses.probe import NormProbe, probe_norms
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_dtype
from sd_lens.runtime.precision import forward_dtype, parse_dtype
from sd_lens.types import HookedModel

__all__ = ["DefectPair", "DtypeCheck", "compare_defects", "dtype_check"]


@dataclass(frozen=True, eq=False)
class DefectPair:
    """A defect found in both dtypes: its labels, peaks and the angle between the two."""

    label: str  # in the model's dtype (D0, m1, ...)
    reference_label: str
    peak_norm: float
    reference_peak_norm: float
    angle_deg: float  # smallest angle between the two at a shared block (sign-blind)
    major: bool
    reference_major: bool

    @property
    def peak_change(self) -> float:
        """Relative change of the peak norm against the reference dtype's."""
        return self.peak_norm / self.reference_peak_norm - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "reference_label": self.reference_label,
            "peak_norm": round(self.peak_norm, 3), "reference_peak_norm": round(self.reference_peak_norm, 3),
            "peak_change": round(self.peak_change, 5), "angle_deg": round(self.angle_deg, 3),
            "major": self.major, "reference_major": self.reference_major,
        }


def _describe(d: Defect) -> str:
    blocks = f"block {d.first_layer}" if d.first_layer == d.last_layer else f"blocks {d.first_layer}-{d.last_layer}"
    kind = "defect" if d.major else "minor group"
    return f"{d.label} ({kind}, {blocks}, {d.carriers(3)}, peak {d.peak_norm:.0f})"


@dataclass(frozen=True, eq=False)
class DtypeCheck:
    """The defects of the model's dtype against a reference dtype's, on the same tokens.

    Attributes:
        dtype: the model's forward dtype (``"float16"``, ``"bfloat16"``).
        reference: the reference dtype (``"float32"``).
        norm_change: ``[n_layers]`` the largest relative change of a token's residual norm at each
            block (``|n - n_ref| / n_ref``, over every token of the corpus).
        high_norm_change: the same over the tokens that are high-norm in the reference.
        pairs: defects (major or minor) found in both.
        phantom: defects of the model's dtype with no reference partner.
        missed: reference defects with no partner in the model's dtype.
    """

    dtype: str
    reference: str
    norm_change: Float[Tensor, " n_layers"]
    high_norm_change: Float[Tensor, " n_layers"]
    pairs: list[DefectPair]
    phantom: list[Defect] = field(default_factory=list)
    missed: list[Defect] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        """Same defects, the same major ones, in both dtypes."""
        return not self.phantom and not self.missed and all(p.major == p.reference_major for p in self.pairs)

    @property
    def max_peak_change(self) -> float:
        """The largest relative change of a paired defect's peak norm (0 with no pairs)."""
        return max((abs(p.peak_change) for p in self.pairs), default=0.0)

    def summary(self) -> str:
        """One paragraph: what the low-precision forward changed, in words."""
        n = self.norm_change
        worst = int(torch.argmax(n)) if n.numel() else 0
        parts = [
            f"In {self.dtype} the residual norms differ from {self.reference} by up to "
            f"{100 * float(n.max()) if n.numel() else 0:.1f} % (block {worst})"
        ]
        if self.pairs:
            parts.append(f"paired defects' peaks by up to {100 * self.max_peak_change:.2f} %")
        text = "; ".join(parts) + "."
        if self.phantom:
            text += (f" Not found in {self.reference}: " + "; ".join(_describe(d) for d in self.phantom)
                     + f" — made by {self.dtype}'s precision, not a property of the model.")
        if self.missed:
            text += f" Found in {self.reference} only: " + "; ".join(_describe(d) for d in self.missed) + "."
        changed = [p for p in self.pairs if p.major != p.reference_major]
        if changed:
            text += " Major in one dtype, minor in the other: " + ", ".join(
                f"{p.label} ({'major' if p.major else 'minor'} in {self.dtype})" for p in changed) + "."
        if self.agrees:
            text += f" Same defects as {self.reference}."
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "reference": self.reference,
            "agrees": self.agrees,
            "max_norm_change": round(float(self.norm_change.max()) if self.norm_change.numel() else 0.0, 5),
            "norm_change": [round(float(x), 5) for x in self.norm_change],
            "high_norm_change": [round(float(x), 5) for x in self.high_norm_change],
            "pairs": [p.to_dict() for p in self.pairs],
            "phantom": [{"label": d.label, "description": _describe(d)} for d in self.phantom],
            "missed": [{"label": d.label, "description": _describe(d)} for d in self.missed],
            "summary": self.summary(),
        }


def _unit(v: Tensor) -> Tensor:
    v = v.detach().double().cpu()
    return v / v.norm().clamp_min(1e-30)


def _angle(a: Defect, b: Defect) -> float | None:
    """Smallest sign-blind angle between ``a`` and ``b`` at a block both span (None: no shared block)."""
    lo, hi = max(a.first_layer, b.first_layer), min(a.last_layer, b.last_layer)
    if lo > hi:
        return None
    best = math.inf
    for layer in range(lo, hi + 1):
        u = a.block_directions.get(layer, a.direction)
        v = b.block_directions.get(layer, b.direction)
        cos = min(1.0, abs(float(_unit(u) @ _unit(v))))
        best = min(best, math.degrees(math.acos(cos)))
    return best


def compare_defects(
    report: DefectReport, reference: DefectReport, *, split_angle_deg: float = 30.0
) -> tuple[list[tuple[Defect, Defect, float]], list[Defect], list[Defect]]:
    """Pair the defects (major and minor) of two reports of the same corpus.

    Greedy by angle: the closest pair first, each defect in at most one pair. Returns
    ``(pairs (defect, reference defect, angle), unpaired of report, unpaired of reference)``.
    """
    if not 0 < split_angle_deg <= 90:
        raise InputError(f"split_angle_deg must be in (0, 90], got {split_angle_deg}")
    ours, theirs = report.all, reference.all
    cands = []
    for i, a in enumerate(ours):
        for j, b in enumerate(theirs):
            ang = _angle(a, b)
            if ang is not None and ang <= split_angle_deg:
                cands.append((ang, i, j))
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for ang, i, j in sorted(cands):
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            pairs.append((ours[i], theirs[j], ang))
    return (
        pairs,
        [d for i, d in enumerate(ours) if i not in used_i],
        [d for j, d in enumerate(theirs) if j not in used_j],
    )


def _norm_change(probe: NormProbe, ref: NormProbe, threshold: float) -> tuple[Tensor, Tensor]:
    a, b = probe.hook("resid_post"), ref.hook("resid_post")
    rel = (a - b).abs() / b.clamp_min(1e-12)
    high = ref.ratio("resid_post") > threshold
    all_max = rel.max(dim=0).values
    high_max = torch.where(high, rel, torch.zeros_like(rel)).max(dim=0).values
    return all_max.float(), high_max.float()


def dtype_check(
    model: HookedModel,
    probe: NormProbe,
    report: DefectReport,
    *,
    reference: str | torch.dtype = "float32",
    threshold: float | None = None,
    split_angle_deg: float = 30.0,
    batch_size: int = 16,
    progress: bool = False,
) -> DtypeCheck:
    """Compare ``report`` (found with the model's own dtype) with the defects of a ``reference`` forward.

    Args:
        model: the model ``probe`` and ``report`` came from.
        probe, report: :func:`~sd_lens.analyses.probe.probe_norms` and
            :func:`~sd_lens.analyses.defects.find_defects` of the model in its own dtype.
        reference: the dtype to check against (float32: the weights are cast for the check and
            restored bit-exactly, one block at a time — the extra memory is the non-block tensors'
            growth plus one block's, checked before anything runs).
        threshold: the high-norm threshold (default: ``report.threshold``).
        split_angle_deg: two defects are the same when their directions are this close at a shared block.
        batch_size, progress: as for :func:`~sd_lens.analyses.probe.probe_norms`.

    Raises:
        InputError: bad arguments, or not enough memory for the reference forward.
    """
    import time

    ref_dtype = parse_dtype(reference)
    threshold = report.threshold if threshold is None else threshold
    if not 0 < split_angle_deg <= 90:
        raise InputError(f"split_angle_deg must be in (0, 90], got {split_angle_deg}")
    t0 = time.perf_counter()
    own = model_dtype(model)
    with forward_dtype(model, ref_dtype, blockwise=True):  # one block cast at a time: +1 block of memory
        ref_probe = probe_norms(model, _tokenized(probe), batch_size=batch_size, progress=progress)
        ref_report = find_defects(model, ref_probe, threshold=threshold, split_angle_deg=split_angle_deg,
                                  batch_size=batch_size, progress=progress)
    if ref_probe.n_tokens != probe.n_tokens:  # pragma: no cover - the same token sequences by construction
        raise RuntimeError("the reference probe saw different tokens")
    pairs, phantom, missed = compare_defects(report, ref_report, split_angle_deg=split_angle_deg)
    norm_change, high_change = _norm_change(probe, ref_probe, threshold)
    return DtypeCheck(
        dtype=own,
        reference=str(ref_dtype).removeprefix("torch."),
        norm_change=norm_change,
        high_norm_change=high_change,
        pairs=[
            DefectPair(a.label, b.label, a.peak_norm, b.peak_norm, ang, a.major, b.major) for a, b, ang in pairs
        ],
        phantom=phantom,
        missed=missed,
        seconds=time.perf_counter() - t0,
    )


def _tokenized(probe: NormProbe) -> Any:
    """The probe's own token sequences, as a :class:`~sd_lens.runtime.tokens.Tokenized` (no re-tokenising)."""
    from sd_lens.runtime.tokens import Tokenized

    return Tokenized(sequences=list(probe.sequences), texts=list(probe.texts))
