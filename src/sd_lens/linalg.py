"""Generic linear algebra shared by the analyses: unit vectors, sign-free angles, signed SVDs.

Singular and eigen-vectors are defined only up to sign, so every angle sd_lens reports is the
*acute* angle between two lines: ``acute_angle_deg(a, b) == acute_angle_deg(a, -b)``, in [0, 90].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "EigenPair",
    "LeadingTriplet",
    "MatrixOp",
    "SingularTriplet",
    "acute_angle_deg",
    "exact_top_singular",
    "leading_triplet",
    "nearest_eigenpair",
    "svd_signed",
    "unit",
]


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
    float64 from the unit vectors' distance (accurate near 0° and 90°, exactly 0 for one direction); returns a float64 tensor (0-dim for two vectors,
    so ``float(acute_angle_deg(u, v))`` works). An angle involving a zero vector is NaN.
    """
    a64 = torch.as_tensor(a).detach().to(torch.float64)
    b64 = torch.as_tensor(b).detach().to(torch.float64)
    # Normalise first: the dot product of two unit vectors cannot overflow whatever the norms.
    na = torch.linalg.vector_norm(a64, dim=dim, keepdim=True)
    nb = torch.linalg.vector_norm(b64, dim=dim, keepdim=True)
    ua, ub = a64 / na, b64 / nb
    # 2·atan2(‖â − b̂‖, ‖â + b̂‖), not arccos(â·b̂): arccos is ill-conditioned near 0°, where a cosine rounded
    # to 1 − 1e-16 reads as 8.5e-7°; this form is accurate at every angle and exactly 0 for one direction
    minus = torch.linalg.vector_norm(ua - ub, dim=dim)
    plus = torch.linalg.vector_norm(ua + ub, dim=dim)
    return torch.rad2deg(2.0 * torch.atan2(torch.minimum(minus, plus), torch.maximum(minus, plus)))


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


# --------------------------------------------------------------------------------------------
# the leading singular triplet and the eigenpair nearest a direction, iteratively (issue 21)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MatrixOp:
    """A matrix known through its products: ``mm(X) = M X`` and ``rmm(Y) = Mᵀ Y`` for column blocks.

    ``dense()`` builds ``M`` itself (float32), only when an exact route needs it. ``device`` is where
    the products run (the blocks handed to ``mm``/``rmm`` live there).
    """

    shape: tuple[int, int]
    mm: Callable[[Tensor], Tensor]
    rmm: Callable[[Tensor], Tensor]
    dense: Callable[[], Tensor]
    device: torch.device

    @classmethod
    def of(cls, m: Tensor, device: torch.device | str | None = None) -> MatrixOp:
        """The products of a dense matrix, in float32 on ``device`` (default: ``m``'s)."""
        dev = torch.device(device) if device is not None else m.device
        md = m.detach().to(dev, torch.float32)
        return cls((int(m.shape[0]), int(m.shape[1])), lambda x: apply(md, x), lambda y: apply(md.T, y), lambda: m.detach(), dev)


def apply(m: Tensor, x: Tensor) -> Tensor:
    """``m @ x`` for a narrow block of columns ``x``, computed as ``(xᵀ mᵀ)ᵀ``: the same products, and on the
    CPU's BLAS about 3x faster for the 1-8 columns of a Krylov block (a wide-times-narrow GEMM is a slow path)."""
    return (x.T @ m.T).T


@dataclass(frozen=True)
class SingularTriplet:
    """The leading singular triplet of a matrix and how it was found.

    Attributes:
        s0: the largest singular value.
        u0, v0: its left and right singular vectors (float32, CPU; the largest-magnitude entry of
            ``u0`` positive, the convention of :func:`svd_signed`).
        solver: ``"iterative"`` (block Krylov in float32, residual-checked), ``"exact"`` (float64
            eigen-decomposition, asked for) or ``"exact (fallback: <reason>)"`` (the iteration could
            not certify its answer, the exact route gave it).
        residual: ``‖Mᵀu₀ − s₀v₀‖ / s₀`` of the iterative answer (``M v₀ = s₀ u₀`` holds by
            construction); NaN for the exact route.
        gap: ``1 − s₁²/s₀²`` estimated by the iteration (NaN for the exact route).
        products: matrix–vector products the iteration used (column blocks count their width).
    """

    s0: float
    u0: Tensor
    v0: Tensor
    solver: str = "exact"
    residual: float = float("nan")
    gap: float = float("nan")
    products: int = 0


def _sign_fixed(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    if float(u[u.abs().argmax()]) < 0:
        return -u, -v
    return u, v


def exact_top_singular(m: Float[Tensor, "m n"], device: torch.device | str | None = None) -> SingularTriplet:
    """The leading triplet exactly: the top eigenpair of ``m mᵀ`` in float64 on ``device`` (default: ``m``'s).

    ``s0 = √λ``, ``u0`` the eigenvector, ``v0 = mᵀ u0 / s0``; several times cheaper than a full SVD
    and exact for the top triplet. Signs as :func:`svd_signed`.
    """
    m64 = m.detach().to(device or m.device, torch.float64)
    vals, vecs = torch.linalg.eigh(m64 @ m64.T)
    u0 = vecs[:, -1]
    s0 = float(vals[-1].clamp(min=0).sqrt())
    v0 = m64.T @ u0 / max(s0, 1e-300)
    u0, v0 = _sign_fixed(u0, v0)
    return SingularTriplet(s0, u0.float().cpu(), v0.float().cpu(), "exact")


def _orthonormal_against(W: Tensor, basis: Tensor | None) -> Tensor:
    """Columns of ``W`` made orthonormal and orthogonal to ``basis`` (classical Gram–Schmidt, twice)."""
    for _ in range(2):
        if basis is not None:
            W = W - basis @ (basis.T @ W)
        W, _ = torch.linalg.qr(W)
    return W


def leading_triplet(
    m: Tensor | MatrixOp,
    device: torch.device | str | None = None,
    *,
    exact: bool = False,
    block_size: int = 4,
    max_dim: int = 192,
    tol_angle: float = 2e-4,
    min_gap: float = 1e-3,
    seed: int = 0,
) -> SingularTriplet:
    """Leading singular triplet ``(s0, u0, v0)`` of ``m`` (a matrix or a :class:`MatrixOp`).

    The default route is a block Krylov iteration on ``mᵀm`` in float32 where ``m``'s products
    run (``device``; default: ``m``'s): a random start block of ``block_size`` columns (seeded by
    ``seed``), each step one product with ``m`` and one with ``mᵀ``, full re-orthogonalisation,
    and after each step the Ritz triplet of the subspace. The answer is accepted when

    * the residual ``r = ‖mᵀu₀ − s₀v₀‖ / s₀`` (``m v₀ = s₀u₀`` holds by construction) bounds the angle
      error of ``v₀`` (and ``u₀``) below ``tol_angle`` radians: ``r / g ≤ tol_angle`` with the gap
      ``g = 1 − s₁²/s₀²`` of the Ritz values, and
    * the leading pair is separated: ``g ≥ min_gap``.

    Otherwise — a degenerate or near-degenerate leading pair, or no convergence within ``max_dim``
    basis vectors — the exact float64 route (:func:`exact_top_singular`) answers and ``solver``
    says why. ``exact=True`` takes the exact route directly (the numbers of sd_lens ≤ 0.x).
    Nothing larger than ``d × max_dim`` is formed on the iterative route.
    """
    op = m if isinstance(m, MatrixOp) else MatrixOp.of(m, device)
    if exact:
        dense = op.dense()
        return exact_top_singular(dense, device if device is not None else op.device)

    def fallback(reason: str) -> SingularTriplet:
        dense = op.dense()
        t = exact_top_singular(dense, device if device is not None else op.device)
        return SingularTriplet(t.s0, t.u0, t.v0, f"exact (fallback: {reason})")

    n_out, n_in = op.shape
    dev = op.device
    limit = max(2, min(n_in, n_out, max_dim))
    b = max(1, min(block_size, limit))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        V = _orthonormal_against(torch.randn(n_in, b, generator=gen).to(dev), None)
        AV = op.mm(V)
        basis, images = V, AV
        products = 2 * b
        r = g = float("nan")
        while True:
            # Ritz triplet of span(basis): the top eigenpair of (M B)ᵀ(M B), in float64 (small)
            G = images.double().T @ images.double()
            vals, vecs = torch.linalg.eigh(G)
            s0 = math.sqrt(max(float(vals[-1]), 0.0))
            s1sq = max(float(vals[-2]), 0.0) if vals.numel() > 1 else 0.0
            if s0 == 0.0 or not math.isfinite(s0):
                return fallback("the matrix is zero or not finite")
            w = vecs[:, -1].to(images.dtype)
            v = basis @ w
            v = v / torch.linalg.vector_norm(v)
            u = op.mm(v[:, None])[:, 0]
            s = float(torch.linalg.vector_norm(u))
            u = u / s
            res = op.rmm(u[:, None])[:, 0] - s * v
            products += 2
            r = float(torch.linalg.vector_norm(res)) / s
            g = 1.0 - s1sq / (s0 * s0)
            if g >= min_gap and r <= tol_angle * g:
                u, v = _sign_fixed(u, v)
                return SingularTriplet(s, u.float().cpu(), v.float().cpu(), "iterative", r, g, products)
            if r < 1e-5 and g < min_gap:
                return fallback(f"leading pair not separated (s1/s0 = {math.sqrt(max(1.0 - g, 0.0)):.6f})")
            if basis.shape[1] + b > limit:
                if g < min_gap:
                    return fallback(f"leading pair not separated (s1/s0 = {math.sqrt(max(1.0 - g, 0.0)):.6f})")
                return fallback(f"not converged in {basis.shape[1]} vectors (residual {r:.1e}, gap {g:.1e})")
            # next block: mᵀm applied to the newest block, orthogonalised against the basis
            W = _orthonormal_against(op.rmm(images[:, -b:]), basis)
            AW = op.mm(W)
            products += 2 * b
            basis = torch.cat([basis, W], 1)
            images = torch.cat([images, AW], 1)


@dataclass(frozen=True)
class EigenPair:
    """The eigenvalue of a matrix whose eigenvector is nearest a direction, and how it was found.

    Attributes:
        value: the eigenvalue (complex; real part and imaginary part as the exact route gives them).
        angle_deg: the phase-free angle between its eigenvector and the direction.
        solver: ``"iterative"`` (Rayleigh-quotient iteration started at the direction, certified),
            ``"exact"`` (a full float64 ``eig``, asked for) or ``"exact (fallback: <reason>)"``.
    """

    value: complex
    angle_deg: float
    solver: str = "exact"


def _exact_nearest(R: Tensor, u: Tensor) -> tuple[complex, float]:
    vals, vecs = torch.linalg.eig(R.double().cpu())
    uc = unit(u.double().cpu()).to(vecs.dtype)
    cos = ((vecs.conj().T @ uc).abs() / torch.linalg.vector_norm(vecs, dim=0)).clamp(max=1.0)
    angles = torch.rad2deg(torch.arccos(torch.nan_to_num(cos, nan=0.0)))
    k = int(angles.argmin())
    return complex(vals[k]), float(angles[k])


def nearest_eigenpair(
    R: Float[Tensor, "d d"],
    u: Float[Tensor, " d"],
    *,
    exact: bool = False,
    device: torch.device | str | None = None,
    max_iter: int = 10,
    tol: float = 1e-11,
) -> EigenPair:
    """The eigenvalue of ``R`` whose eigenvector is nearest the unit vector ``u``, and that angle.

    Default route (float64 on ``device``, default ``R``'s): Rayleigh-quotient iteration started at
    ``u`` (shift ``uᵀRu``; each step one LU solve with ``R − σI``) until ``‖Rx − λx‖ ≤ tol·‖R‖``; then
    the left eigenvector ``y`` of ``λ`` by inverse iteration with the same factors. Every other
    eigenvector of ``R`` is orthogonal to ``y``, so none can be nearer ``u`` than
    ``sin ∠(u, y)``: the answer is accepted when ``cos ∠(u, x)`` exceeds that (a certificate that
    ``x`` is the nearest eigenvector). Otherwise — no convergence, a complex eigenvalue, or no
    certificate (e.g. the nearest eigenvector is far from ``u``) — the full ``eig`` answers and
    ``solver`` says why. ``exact=True`` takes the full ``eig`` directly.
    """
    if exact:
        value, angle = _exact_nearest(R, u)
        return EigenPair(value, angle, "exact")

    def fallback(reason: str) -> EigenPair:
        value, angle = _exact_nearest(R, u)
        return EigenPair(value, angle, f"exact (fallback: {reason})")

    dev = torch.device(device) if device is not None else R.device
    R64 = R.detach().to(dev, torch.float64)
    d = R64.shape[0]
    u64 = unit(u.detach().to(dev, torch.float64))
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    norm = float(torch.linalg.matrix_norm(R64))
    if not math.isfinite(norm):
        return fallback("the matrix is not finite")
    if norm == 0.0:
        return EigenPair(0j, 0.0, "iterative")
    x, lam = u64, float(u64 @ R64 @ u64)
    converged = False
    with torch.no_grad():
        for _ in range(max_iter):
            shift = lam if lam != 0 else 1e-12 * norm
            LU, piv, info = torch.linalg.lu_factor_ex(R64 - shift * eye)
            if int(info) != 0:  # the shift is an eigenvalue to machine precision: x is its eigenvector
                shift += 1e-10 * norm
                LU, piv, _ = torch.linalg.lu_factor_ex(R64 - shift * eye)
            y = torch.linalg.lu_solve(LU, piv, x[:, None])[:, 0]
            if not bool(torch.isfinite(y).all()):
                break
            x = unit(y)
            Rx = R64 @ x
            lam = float(x @ Rx)
            if float(torch.linalg.vector_norm(Rx - lam * x)) <= tol * norm:
                converged = True
                break
        if not converged:
            return fallback(f"Rayleigh-quotient iteration from the direction did not converge in {max_iter} steps")
        LU, piv, _ = torch.linalg.lu_factor_ex(R64 - (lam + 1e-9 * norm) * eye)
        y = u64
        for _ in range(3):  # left eigenvector: inverse iteration on (R − λI)ᵀ
            y = unit(torch.linalg.lu_solve(LU, piv, y[:, None], adjoint=True)[:, 0])
        if not bool(torch.isfinite(y).all()):
            return fallback("the left eigenvector could not be found")
        cos_x = abs(float(x @ u64))
        sin_y = math.sqrt(max(0.0, 1.0 - float(y @ u64) ** 2))
        if cos_x <= sin_y + 1e-9:
            return fallback(
                f"the eigenvector found is {math.degrees(math.acos(min(cos_x, 1.0))):.1f} deg from the direction; "
                "not certified nearest"
            )
    return EigenPair(complex(lam, 0.0), math.degrees(math.acos(min(cos_x, 1.0))), "iterative")
