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
from sd_lens.linalg import acute_angle_deg, unit
from sd_lens.models.view import BlockView, ModelView, model_view, resolve_block
from sd_lens.types import HookedModel, ModelOrView


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
    layer = view.layer  # a negative index counts from the end
    fit = fit or fit_ffn(view, layer, method=method, **fit_kwargs)  # type: ignore[arg-type]
    A = _post_scaled(attention_matrix(view).A, view.attn_post_scale)
    F = _post_scaled(fit.F, view.mlp_post_scale)
    eye = torch.eye(A.shape[0])
    L = eye + A + F if view.parallel else (eye + F) @ (eye + A)
    return BlockLinearization(layer, A, F, L, view.parallel, fit)


def top_singular(
    m: Float[Tensor, "d d"], device: torch.device | str | None = None
) -> tuple[float, Float[Tensor, " d"], Float[Tensor, " d"]]:
    """Leading singular triplet ``(s0, u0, v0)`` of a square matrix, exactly, in float64 on ``device``
    (default: ``m``'s); ``u0``, ``v0`` come back as float32 on the CPU.

    From the symmetric eigenproblem of ``m mᵀ`` (u0 its top eigenvector, ``s0 = √λ``,
    ``v0 = mᵀ u0 / s0``): several times cheaper than a full SVD and exact for the top triplet.
    Signs follow :func:`~sd_lens.linalg.svd_signed`: the largest-magnitude entry of
    ``u0`` is positive, so ``u0``/``v0`` agree with those of ``FFNFit``/``AttentionMatrix``
    (angles are sign-free anyway).
    """
    m64 = m.detach().to(device or m.device, torch.float64)
    vals, vecs = torch.linalg.eigh(m64 @ m64.T)
    u0 = vecs[:, -1]
    if float(u0[u0.abs().argmax()]) < 0:
        u0 = -u0
    s0 = float(vals[-1].clamp(min=0).sqrt())
    v0 = m64.T @ u0 / max(s0, 1e-300)
    return s0, u0.float().cpu(), v0.float().cpu()


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


@dataclass(frozen=True, eq=False)
class LayerSpectra:
    """Per-block spectra for a model, with angles to the given directions."""

    blocks: list[BlockSpectrum]
    method: str
    seconds: float
    n_directions: int
    linearizations: dict[int, BlockLinearization] = field(default_factory=dict, repr=False)

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
    """
    t0 = time.perf_counter()
    fit_kwargs.setdefault("n_eval", 1024)  # held-out samples for the reported R² (of 576+ output dims): enough
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
        lin = linearize_block(block, layer, method=method, **fit_kwargs, **extra)
        dev = block.W_out.device  # the eigenproblems run where the block's weights are (a GPU when there is one)
        s0, u0, v0 = top_singular(lin.L, dev)
        fs0, fu0, fv0 = top_singular(lin.F, dev)
        blocks.append(
            BlockSpectrum(
                layer=layer,
                s0=s0,
                u0=u0,
                v0=v0,
                ffn_s0=fs0,
                ffn_u0=fu0,
                ffn_v0=fv0,
                angles_deg=[float(acute_angle_deg(u0, d)) for d in dirs],
                ffn_angles_deg=[float(acute_angle_deg(fu0, d)) for d in dirs],
                ffn_r2=float(lin.ffn_fit.r2),
            )
        )
        if layer in keep:
            kept[layer] = lin
    return LayerSpectra(blocks, method, time.perf_counter() - t0, len(dirs), kept)


@dataclass(frozen=True)
class DecayCheck:
    """Claim (ii) at one block: does ``R = L − I`` send the direction back on itself (R u ≈ −u)?"""

    layer: int
    eigenvalue: float  # real part of the eigenvalue whose eigenvector is nearest the direction
    eigenvalue_imag: float
    eigvec_angle_deg: float
    rayleigh: float  # uᵀ R u along the direction itself

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
    method: str = "gaussian",
) -> DecayCheck:
    """Eigen-decomposition of ``R = L − I`` at ``layer`` against a defect direction (observation ii)."""
    if lin is None:
        block = resolve_block(model_or_view, layer)
        lin = linearize_block(block, block.layer, method=method)
    R = lin.residual().double()
    u = unit(direction.detach().double().cpu())
    value, angle = nearest_eigenvector(R, u)
    return DecayCheck(
        layer=lin.layer,
        eigenvalue=float(value.real),
        eigenvalue_imag=float(value.imag),
        eigvec_angle_deg=angle,
        rayleigh=float(u @ R @ u),
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
