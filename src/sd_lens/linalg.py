"""Generic linear algebra shared by the analyses: unit vectors, sign-free angles, signed SVDs.

Singular and eigen-vectors are defined only up to sign, so every angle sd_lens reports is the
*acute* angle between two lines: ``acute_angle_deg(a, b) == acute_angle_deg(a, -b)``, in [0, 90].
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["LeadingTriplet", "acute_angle_deg", "svd_signed", "unit"]


def unit(x: Float[Tensor, "*batch d"], dim: int = -1, eps: float = 0.0) -> Float[Tensor, "*batch d"]:
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


def acute_angle_deg(a: Float[Tensor, "*a d"], b: Float[Tensor, "*b d"], dim: int = -1) -> Float[Tensor, "*batch"]:
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


def svd_signed(
    m: Float[Tensor, "m n"], device: torch.device | str | None = None
) -> tuple[Float[Tensor, "m k"], Float[Tensor, " k"], Float[Tensor, "k n"]]:
    """SVD ``m = U diag(S) Vh`` computed in float64 on ``device`` (default: ``m``'s), returned as
    float32 on the CPU.

    Singular vectors are only defined up to a joint sign flip of ``(u_k, v_k)``; this fixes the
    sign so that the largest-magnitude entry of every ``u_k`` is positive, which makes results
    reproducible across runs and methods (angles are sign-free anyway).
    """
    U, S, Vh = torch.linalg.svd(m.detach().to(device or m.device, torch.float64), full_matrices=False)
    idx = U.abs().argmax(0)
    sign = torch.sign(U[idx, torch.arange(U.shape[1], device=U.device)])
    sign[sign == 0] = 1
    U = U * sign
    Vh = Vh * sign[:, None]
    return U.float().cpu(), S.float().cpu(), Vh.float().cpu()


class LeadingTriplet:
    """``u0``, ``s0``, ``v0`` of a matrix whose class provides ``svd() -> (U, S, Vh)``."""

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @property
    def u0(self) -> Float[Tensor, " d_out"]:
        """Leading left singular vector: the output direction the matrix amplifies most."""
        return self.svd()[0][:, 0]

    @property
    def s0(self) -> float:
        """Largest singular value."""
        return float(self.svd()[1][0])

    @property
    def v0(self) -> Float[Tensor, " d_in"]:
        """Leading right singular vector: the input direction amplified most (the trigger)."""
        return self.svd()[2][0]
