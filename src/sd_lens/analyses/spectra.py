"""Layer-wise singular directions (analysis 4 in docs/analyses.md) and the decay eigen-check (analysis 5).

Each block is replaced by its linear approximation acting on the (normalised) residual state:
``L = (I + F)(I + A)`` for sequential blocks and ``L = I + A + F`` for parallel ones, with ``A``
the attention update of a self-attending token (:mod:`sd_lens.analyses.attention_matrix`) and ``F`` the
linearised FFN (:mod:`sd_lens.analyses.ffn_fit`). Blocks with post-norms (Gemma-3's sandwich norms) see
each update through ``diag(γ_post) / ρ``, where ``ρ = ‖A‖_F / √d`` is the RMS that the update takes
for a standard-normal normalised input: the post-norm's division by the RMS of its input,
linearised at that typical input. This is an approximation of ours; the papers do not cover it.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observation (i) (the layer-wise singular direction, the leading left singular vector of ``L``, predicts
the explosion) and (ii) (negative eigenvalues of ``L − I`` explain the decay).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.attention_matrix import attention_matrix
from sd_lens.analyses.ffn_fit import FFNFit, fit_ffn
from sd_lens.linalg import (
    MatrixOp,
    acute_angle_deg,
    apply,
    exact_top_singular,
    leading_triplet,
    nearest_eigenpair,
    unit,
)
from sd_lens.models.view import BlockView, ModelOrView, ModelView, model_view, resolve_block
from sd_lens.types import HookedModel


def _post_scaled(m: Tensor, scale: Tensor | None) -> Tensor:
    if scale is None:
        return m
    rho = float(torch.linalg.matrix_norm(m)) / math.sqrt(m.shape[0])
    return scale.to(m.device)[:, None] * m / max(rho, 1e-12)


@dataclass(frozen=True, eq=False)
class BlockLinearization:
    """``A``, ``F`` and ``L`` of one block (column form, float32)."""

    layer: int
    A: Tensor
    F: Tensor
    L: Tensor
    parallel: bool
    ffn_fit: FFNFit

    def residual(self) -> Float[Tensor, "d_model d_model"]:
        """``R = L − I``: what the block adds to a state."""
        return self.L - torch.eye(self.L.shape[0])


def linearize_block(
    model_or_view: ModelOrView, layer: int, *, fit: FFNFit | None = None, method: str = "gaussian", **fit_kwargs: Any
) -> BlockLinearization:
    """The block's linear approximation ``L`` (see the module docstring)."""
    view: BlockView = resolve_block(model_or_view, layer)
    A, F, fit = _block_parts(view, fit, method, **fit_kwargs)
    return BlockLinearization(view.layer, A, F, _dense_L(A, F, view.parallel), view.parallel, fit)


def _block_parts(
    view: BlockView, fit: FFNFit | None, method: str, *, per_head: bool = True, **fit_kwargs: Any
) -> tuple[Tensor, Tensor, FFNFit]:
    """``A`` and ``F`` of a block (post-norm scaled, float32, CPU) and its FFN fit.

    ``per_head=False`` computes ``A`` in one contraction without the ``n_heads × d × d`` per-head
    matrices of :func:`~sd_lens.analyses.attention_matrix.attention_matrix` (the same sum, in another
    order: equal within float32 rounding).
    """
    fit = fit or fit_ffn(view, view.layer, method=method, **fit_kwargs)  # type: ignore[arg-type]
    A = _post_scaled(attention_matrix(view).A if per_head else _attention_sum(view), view.attn_post_scale)
    F = _post_scaled(fit.F, view.mlp_post_scale)
    return A, F, fit


def _attention_sum(view: BlockView) -> Tensor:
    """``A = Σ_h (W_V^h W_O^h)ᵀ diag(γ₁)`` [· P] directly (see :mod:`~sd_lens.analyses.attention_matrix`)."""
    with torch.no_grad():
        A = torch.einsum("hdk,hke->ed", view.W_V, view.W_O) * view.ln1_scale
        if view.norm == "layer":
            A = A - A.mean(-1, keepdim=True)
    return A.cpu()


def _dense_L(A: Tensor, F: Tensor, parallel: bool) -> Tensor:
    eye = torch.eye(A.shape[0])
    return eye + A + F if parallel else (eye + F) @ (eye + A)


def _L_operator(A: Tensor, F: Tensor, parallel: bool, device: torch.device) -> MatrixOp:
    """``L`` through its products, never formed: ``L x = x + A x + F x`` (parallel) or
    ``(I + F)(I + A) x`` (sequential), and ``Lᵀ`` likewise; ``dense()`` forms it as :func:`linearize_block`."""
    Ad, Fd = A.to(device, torch.float32), F.to(device, torch.float32)
    if parallel:
        def mm(x: Tensor) -> Tensor:
            return x + apply(Ad, x) + apply(Fd, x)

        def rmm(y: Tensor) -> Tensor:
            return y + apply(Ad.T, y) + apply(Fd.T, y)
    else:
        def mm(x: Tensor) -> Tensor:
            z = x + apply(Ad, x)
            return z + apply(Fd, z)

        def rmm(y: Tensor) -> Tensor:
            z = y + apply(Fd.T, y)
            return z + apply(Ad.T, z)

    d = int(A.shape[0])
    return MatrixOp((d, d), mm, rmm, lambda: _dense_L(A, F, parallel), device)


def top_singular(
    m: Float[Tensor, "d d"], device: torch.device | str | None = None
) -> tuple[float, Float[Tensor, " d"], Float[Tensor, " d"]]:
    """Leading singular triplet ``(s0, u0, v0)`` of a square matrix, exactly, in float64 on ``device``
    (default: ``m``'s); ``u0``, ``v0`` come back as float32 on the CPU.

    From the symmetric eigenproblem of ``m mᵀ`` (u0 its top eigenvector, ``s0 = √λ``,
    ``v0 = mᵀ u0 / s0``): several times cheaper than a full SVD and exact for the top triplet.
    Signs follow :func:`~sd_lens.linalg.svd_signed`: the largest-magnitude entry of
    ``u0`` is positive, so ``u0``/``v0`` agree with those of ``FFNFit``/``AttentionMatrix``
    (angles are sign-free anyway). The iterative float32 route is
    :func:`~sd_lens.linalg.leading_triplet` (what :func:`layer_spectra` uses by default).
    """
    t = exact_top_singular(m, device)
    return t.s0, t.u0, t.v0


@dataclass(frozen=True, eq=False)
class BlockSpectrum:
    """Leading singular triplet of ``L`` and of ``F`` for one block, and angles to directions."""

    layer: int
    s0: float
    u0: Tensor
    v0: Tensor
    ffn_s0: float
    ffn_u0: Tensor
    ffn_v0: Tensor
    angles_deg: list[float]  # u0 of L vs each direction
    ffn_angles_deg: list[float]  # u0 of F vs each direction
    ffn_r2: float
    solver: str = "exact"  # how the triplet of L was found: "iterative", "exact", "exact (fallback: why)"
    ffn_solver: str = "exact"  # the same for F
    ffn_r2_se: float = float("nan")  # sampling standard error of ffn_r2 (FFNFit.r2_se)


@dataclass(frozen=True, eq=False)
class LayerSpectra:
    """Per-block spectra for a model, with angles to the given directions."""

    blocks: list[BlockSpectrum]
    method: str
    seconds: float
    n_directions: int
    linearizations: dict[int, BlockLinearization] = field(default_factory=dict, repr=False)
    exact: bool = False

    def fallbacks(self) -> list[tuple[int, str, str]]:
        """``(block, "L" or "F", solver)`` for every triplet the iterative route handed to the exact one."""
        return [
            (b.layer, name, solver)
            for b in self.blocks
            for name, solver in (("L", b.solver), ("F", b.ffn_solver))
            if solver.startswith("exact (fallback")
        ]

    def angles(self, k: int = 0, ffn: bool = False) -> Float[Tensor, " n_blocks"]:
        """Angle (deg) of u0 (of L, or of F) to direction ``k`` at every block: [n_layers]."""
        return torch.tensor([(b.ffn_angles_deg if ffn else b.angles_deg)[k] for b in self.blocks])

    def closest_block(self, k: int = 0) -> int:
        return int(self.angles(k).argmin())

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {
                "layer": b.layer,
                "top_singular_value": round(b.s0, 4),
                "ffn_top_singular_value": round(b.ffn_s0, 4),
                "angles_deg": [round(a, 3) for a in b.angles_deg],
                "ffn_angles_deg": [round(a, 3) for a in b.ffn_angles_deg],
                "ffn_r2": round(b.ffn_r2, 5),
                "ffn_r2_se": round(b.ffn_r2_se, 5),
            }
            for b in self.blocks
        ]


def layer_spectra(
    model_or_view: HookedModel | ModelView,
    directions: Sequence[Float[Tensor, " d_model"]] = (),
    *,
    method: str = "gaussian",
    layers: Sequence[int] | None = None,
    keep: Sequence[int] = (),
    inputs_by_layer: dict[int, Float[Tensor, "n d_model"]] | None = None,
    progress: bool | str = False,
    exact: bool = False,
    **fit_kwargs: Any,
) -> LayerSpectra:
    """Leading singular direction of every block's ``L`` (and ``F``) and its angle to ``directions``.

    Args:
        model_or_view: model or :class:`~sd_lens.models.view.ModelView`.
        directions: unit vectors (e.g. each defect's ``direction``).
        method: FFN fit (``"gaussian"``, ``"monte_carlo"``, ``"real"``; see :func:`~sd_lens.analyses.ffn_fit.fit_ffn`).
        layers: blocks to analyse (default all).
        keep: blocks whose :class:`BlockLinearization` is kept in the result (for eigen-checks).
        inputs_by_layer: real normalised FFN inputs per block for ``method="real"`` (see
            :func:`~sd_lens.analyses.ffn_inputs.collect_ffn_inputs`, which returns this dict for a list of blocks).
        progress: a tqdm bar over the blocks (a string is its label).
        exact: the leading triplets by exact float64 eigen-decompositions of ``L Lᵀ`` and ``F Fᵀ`` (the
            numbers of sd_lens before issue 21). Default: :func:`~sd_lens.linalg.leading_triplet`, a
            residual-checked block Krylov iteration in float32 on the block's device that never forms ``L``
            (only kept blocks' ``L`` is formed) and falls back to the exact route where it cannot certify
            its answer (``BlockSpectrum.solver`` / ``ffn_solver`` say so; :meth:`LayerSpectra.fallbacks`
            lists them). Both agree within 0.05 deg and 1e-4 relative on s0 where the iteration answers.
    """
    t0 = time.perf_counter()
    # held-out Gaussian inputs for the reported R² of each FFN fit. Its cost is n_eval forwards of the FFN per block
    # (1 024: twice the rest of the stage on SmolLM2); its noise is reported beside it (ffn_r2_se, 0.02-0.04 at 256)
    fit_kwargs.setdefault("n_eval", 256)
    view: ModelView = model_or_view if isinstance(model_or_view, ModelView) else model_view(model_or_view)
    dirs = [unit(d.detach().float().cpu()) for d in directions]
    blocks, kept = [], {}
    todo: Any = list(layers) if layers is not None else list(range(view.n_layers))
    if progress:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc=progress if isinstance(progress, str) else "block spectra", unit="block")
    for layer in todo:
        extra: dict[str, Any] = {"inputs": inputs_by_layer[layer]} if inputs_by_layer is not None else {}
        block = view.block(layer)
        dev = block.W_out.device  # the eigenproblems run where the block's weights are (a GPU when there is one)
        # a kept block's L feeds the decay check, whose eigenvalue can be as sensitive as float32 rounding
        # of L itself (Gemma-3 block 16: 1.6e-4 relative for A summed in another order): the same A as before
        A, F, fit = _block_parts(block, None, method, per_head=exact or layer in keep, **fit_kwargs, **extra)
        lin = None
        if layer in keep or exact:
            lin = BlockLinearization(block.layer, A, F, _dense_L(A, F, block.parallel), block.parallel, fit)
            top = leading_triplet(lin.L, dev, exact=exact)
        else:
            top = leading_triplet(_L_operator(A, F, block.parallel, dev), exact=exact)
        ftop = leading_triplet(F, dev, exact=exact)
        blocks.append(
            BlockSpectrum(
                layer=layer,
                s0=top.s0,
                u0=top.u0,
                v0=top.v0,
                ffn_s0=ftop.s0,
                ffn_u0=ftop.u0,
                ffn_v0=ftop.v0,
                angles_deg=[float(acute_angle_deg(top.u0, d)) for d in dirs],
                ffn_angles_deg=[float(acute_angle_deg(ftop.u0, d)) for d in dirs],
                ffn_r2=float(fit.r2),
                ffn_r2_se=float(fit.r2_se),
                solver=top.solver,
                ffn_solver=ftop.solver,
            )
        )
        if layer in keep and lin is not None:
            kept[layer] = lin
    return LayerSpectra(blocks, method, time.perf_counter() - t0, len(dirs), kept, exact)


@dataclass(frozen=True)
class DecayCheck:
    """Claim (ii) at one block: does ``R = L − I`` send the direction back on itself (R u ≈ −u)?"""

    layer: int
    eigenvalue: float  # real part of the eigenvalue whose eigenvector is nearest the direction
    eigenvalue_imag: float
    eigvec_angle_deg: float
    rayleigh: float  # uᵀ R u along the direction itself
    solver: str = "exact"  # "iterative", "exact", or "exact (fallback: why)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "eigenvalue": round(self.eigenvalue, 4),
            "eigenvalue_imag": round(self.eigenvalue_imag, 4),
            "eigvec_angle_deg": round(self.eigvec_angle_deg, 3),
            "rayleigh": round(self.rayleigh, 4),
        }


def decay_check(
    model_or_view: ModelOrView, layer: int, direction: Float[Tensor, " d_model"], *, lin: BlockLinearization | None = None,
    method: str = "gaussian", exact: bool = False,
) -> DecayCheck:
    """Eigen-decomposition of ``R = L − I`` at ``layer`` against a defect direction (observation ii).

    ``exact=True``: a full float64 ``eig`` (:func:`nearest_eigenvector`). Default:
    :func:`~sd_lens.linalg.nearest_eigenpair`, a Rayleigh-quotient iteration started at the
    direction whose answer is certified to be the nearest eigenvector, else the full ``eig``
    (``DecayCheck.solver`` says which).
    """
    if lin is None:
        block = resolve_block(model_or_view, layer)
        lin = linearize_block(block, block.layer, method=method)
    R = lin.residual().double()
    u = unit(direction.detach().double().cpu())
    pair = nearest_eigenpair(R, u, exact=exact)
    return DecayCheck(
        layer=lin.layer,
        eigenvalue=float(pair.value.real),
        eigenvalue_imag=float(pair.value.imag),
        eigvec_angle_deg=pair.angle_deg,
        rayleigh=float(u @ R @ u),
        solver=pair.solver,
    )


def nearest_eigenvector(R: Float[Tensor, "d d"], u: Float[Tensor, " d"]) -> tuple[complex, float]:
    """The eigenvalue of ``R`` whose eigenvector is nearest the unit vector ``u``, and that angle (degrees).

    Eigenvectors of a real matrix may be complex and carry an arbitrary phase, so the angle is
    taken from the phase-free overlap ``|vᴴu| / ‖v‖`` (for a real eigenvector: the acute angle).
    """
    vals, vecs = torch.linalg.eig(R.double())
    u = u.double().to(vecs.dtype)
    cos = ((vecs.conj().T @ u).abs() / torch.linalg.vector_norm(vecs, dim=0)).clamp(max=1.0)
    angles = torch.rad2deg(torch.arccos(torch.nan_to_num(cos, nan=0.0)))
    k = int(angles.argmin())
    return complex(vals[k]), float(angles[k])
