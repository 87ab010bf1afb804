"""Small, sign-free geometry helpers shared by the analyses.

Singular and eigen-vectors are defined only up to sign, so every angle sd_lens reports is the
*acute* angle between two lines: ``acute_angle_deg(a, b) == acute_angle_deg(a, -b)``, in [0, 90].
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["acute_angle_deg", "unit"]


def unit(x: Tensor, dim: int = -1, eps: float = 0.0) -> Tensor:
    """``x`` scaled to unit Euclidean norm along ``dim`` (batched; dtype preserved).

    A zero vector stays zero (it is divided by 1 instead of 0) unless ``eps`` > 0 is given, in
    which case the norm is clamped to at least ``eps``.
    """
    x = torch.as_tensor(x)
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    if eps > 0:
        norm = norm.clamp_min(eps)
    else:
        norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    return x / norm


def acute_angle_deg(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Acute angle in degrees, in [0, 90], between the lines spanned by ``a`` and ``b``.

    Batched: ``a`` and ``b`` broadcast against each other, the vectors lie along ``dim``
    (e.g. ``a`` of shape ``[k, d]`` and ``b`` of shape ``[d]`` give ``k`` angles). Computed in
    float64 with the cosine clamped to [0, 1]; returns a float64 tensor (0-dim for two vectors,
    so ``float(acute_angle_deg(u, v))`` works). An angle involving a zero vector is NaN.
    """
    a64 = torch.as_tensor(a).detach().to(torch.float64)
    b64 = torch.as_tensor(b).detach().to(torch.float64)
    # Normalise first: the dot product of two unit vectors cannot overflow whatever the norms.
    na = torch.linalg.vector_norm(a64, dim=dim, keepdim=True)
    nb = torch.linalg.vector_norm(b64, dim=dim, keepdim=True)
    cos = ((a64 / na) * (b64 / nb)).sum(dim).abs().clamp(0.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))
