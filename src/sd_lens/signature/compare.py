"""Angle matrix between the signatures of any number of models (table, JSON, heat map).

Entry ``(i, j)`` is the acute angle in degrees between model ``i``'s and model ``j``'s signature of
one kind (:func:`~sd_lens.signature.signature.signature_angle`): symmetric, zero on the diagonal,
in [0, 90]; NaN where a model has no empirical signature. Relatives are expected a few degrees
apart and unrelated models of the same width near 90° (Wang et al., ICML 2025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg
from sd_lens.signature.signature import KINDS, Signature

__all__ = ["AngleMatrix", "angle_matrix", "check_widths"]


def check_widths(widths: Sequence[tuple[str, int | None]]) -> None:
    """Raise :class:`InputError` naming the models when the known widths differ (None: unknown, skipped)."""
    known = [(n, w) for n, w in widths if w is not None]
    if len({w for _, w in known}) > 1:
        listing = ", ".join(f"{n} (d_model {w})" for n, w in known)
        raise InputError(
            f"signatures of different widths cannot be compared: {listing}. A signature is a direction of the "
            "residual stream, and streams of different widths are different spaces; compare models of one width"
        )


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


@dataclass(frozen=True, eq=False)
class AngleMatrix:
    """Pairwise signature angles of ``names`` (degrees; see the module docstring).

    Attributes:
        names: one label per signature (made unique with ``#2``, ``#3``...).
        empirical: ``[n, n]`` angles between the empirical signatures (NaN where one is missing).
        weights: ``[n, n]`` angles between the weights signatures.
        d_model: the common width.
        signatures: the signatures compared.
    """

    names: list[str]
    empirical: Float[Tensor, "n n"]
    weights: Float[Tensor, "n n"]
    d_model: int
    signatures: list[Signature]

    def matrix(self, kind: str) -> Float[Tensor, "n n"]:
        if kind not in KINDS:
            raise InputError(f"unknown signature kind {kind!r}; choose one of {', '.join(KINDS)}")
        return self.empirical if kind == "empirical" else self.weights

    def angle(self, a: str, b: str, kind: str = "empirical") -> float:
        """The angle between two named models."""
        for n in (a, b):
            if n not in self.names:
                raise InputError(f"no model {n!r} in the matrix; it holds {', '.join(self.names)}")
        return float(self.matrix(kind)[self.names.index(a), self.names.index(b)])

    def table(self, kind: str = "empirical", digits: int = 1) -> str:
        """A plain-text table of one kind (rows and columns in ``names`` order)."""
        m = self.matrix(kind)
        width = max(len(f"{kind} (deg)"), *(len(n) for n in self.names))
        col = max(7, *(len(n) for n in self.names))
        head = f"{kind} (deg)".ljust(width) + " " + " ".join(n.rjust(col) for n in self.names)
        rows = [head]
        for i, n in enumerate(self.names):
            cells = ["-".rjust(col) if math.isnan(float(x)) else f"{float(x):.{digits}f}".rjust(col) for x in m[i]]
            rows.append(n.ljust(width) + " " + " ".join(cells))
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        def rounded(m: Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(float(x)) else round(float(x), 3) for x in row] for row in m]

        return {
            "names": list(self.names),
            "d_model": self.d_model,
            "empirical_deg": rounded(self.empirical),
            "weights_deg": rounded(self.weights),
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def figure(self, title: str | None = "Signature angles (degrees; 0 = same line, 90 = unrelated)") -> Figure:
        """Two heat maps side by side (empirical, weights), each cell annotated with its angle."""
        n = len(self.names)
        size = 1.0 + 0.55 * n
        fig = Figure(figsize=(2 * size + 1.6, size + 0.6))
        axes = fig.subplots(1, 2)
        image = None
        for ax, kind in zip(axes, KINDS):
            m = self.matrix(kind).double().numpy()
            image = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=90, cmap="viridis_r")
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            labels = [s.replace("$", r"\$") for s in self.names]
            ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
            ax.set_yticklabels(labels if kind == KINDS[0] else [], fontsize=8)
            for i in range(n):
                for j in range(n):
                    v = m[i, j]
                    text = "–" if not np.isfinite(v) else f"{v:.1f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if not np.isfinite(v) or v < 45 else "white")
            ax.set_title(f"{kind} signature", fontsize=10)
        assert image is not None
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="angle (degrees)")
        if title:
            fig.suptitle(title.replace("$", r"\$"), fontsize=11)
        return fig


def angle_matrix(signatures: Sequence[Signature], names: Sequence[str] | None = None) -> AngleMatrix:
    """Pairwise acute angles of any number of signatures of one width, for both kinds.

    Args:
        signatures: the signatures (e.g. :func:`compute_signature` results or :func:`load_signature` files).
        names: labels (default: each signature's model name).

    Raises:
        InputError: no signature, a wrong number of names, or different widths.
    """
    sigs = list(signatures)
    if not sigs:
        raise InputError("no signature to compare: give at least one")
    labels = [s.model for s in sigs] if names is None else [str(n) for n in names]
    if len(labels) != len(sigs):
        raise InputError(f"{len(labels)} names for {len(sigs)} signatures")
    check_widths([(n, s.d_model) for n, s in zip(labels, sigs)])
    n = len(sigs)
    mats = {}
    for kind in KINDS:
        m = torch.full((n, n), float("nan"), dtype=torch.float64)
        for i in range(n):
            for j in range(i, n):
                a, b = sigs[i].vector(kind), sigs[j].vector(kind)
                if a is None or b is None:
                    continue
                angle = 0.0 if i == j else float(acute_angle_deg(a, b))
                m[i, j] = m[j, i] = angle
        mats[kind] = m
    return AngleMatrix(_unique(labels), mats["empirical"], mats["weights"], sigs[0].d_model, sigs)
